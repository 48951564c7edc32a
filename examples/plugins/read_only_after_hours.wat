;; read_only_after_hours: an `on_token_request` plugin (meshgate plugin ABI 1, see plugins/ABI.md).
;;
;; Between 08:00 and 18:00 UTC it allows the request unchanged and adds the claim
;; `"shift":"day"`; outside those hours it narrows the scopes to those ending in `:read` and adds
;; `"shift":"night"`. The time is the `now` field of the input: plugins have no clock of their own.
;;
;; Build, sign and install:
;;   meshgate plugin build examples/plugins/read_only_after_hours.wat -o read_only_after_hours.wasm
;;   meshgate plugin sign read_only_after_hours.wasm --key dev.key --name read-only-after-hours \
;;       --plugin-version 1.0.0 --hook on_token_request
;;   meshgate plugin install read_only_after_hours.wasm --all-clients
(module
  (memory (export "memory") 4)
  ;; Output is written from 64 KiB on; input is placed at 128 KiB by `alloc`.
  (global $out (mut i32) (i32.const 65536))
  (data (i32.const 0) "\"now\":")
  (data (i32.const 16) "\"scopes\":[")
  (data (i32.const 32) "{\"decision\":\"allow\",\"claims\":{\"shift\":\"day\"}}")
  (data (i32.const 128) "{\"decision\":\"allow\",\"claims\":{\"shift\":\"night\"},\"scopes\":[")
  (data (i32.const 256) ":read")
  (data (i32.const 272) "]}")
  (data (i32.const 280) ",")

  (func (export "alloc") (param $len i32) (result i32)
    (if (i32.gt_u (local.get $len) (i32.const 131072)) (then unreachable))
    (i32.const 131072))

  ;; Whether the $n bytes at $a equal those at $b.
  (func $eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $b) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 1))

  ;; The offset of the first $m-byte needle at $np in the $n bytes at $p, or -1.
  (func $find (param $p i32) (param $n i32) (param $np i32) (param $m i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.gt_u (i32.add (local.get $i) (local.get $m)) (local.get $n)))
        (if (call $eq (i32.add (local.get $p) (local.get $i)) (local.get $np) (local.get $m))
          (then (return (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const -1))

  (func $emit (param $p i32) (param $n i32)
    (memory.copy (global.get $out) (local.get $p) (local.get $n))
    (global.set $out (i32.add (global.get $out) (local.get $n))))

  (func $answer (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))

  (func (export "on_token_request") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $c i32) (local $now i64) (local $hour i64)
    (local $start i32) (local $end i32) (local $first i32) (local $limit i32)
    ;; instances are reused: start the output afresh
    (global.set $out (i32.const 65536))
    ;; now
    (local.set $i (call $find (local.get $p) (local.get $n) (i32.const 0) (i32.const 6)))
    (if (i32.lt_s (local.get $i) (i32.const 0)) (then unreachable))
    (local.set $i (i32.add (i32.add (local.get $p) (local.get $i)) (i32.const 6)))
    (block $digits
      (loop $digit
        (local.set $c (i32.load8_u (local.get $i)))
        (br_if $digits (i32.or (i32.lt_u (local.get $c) (i32.const 48)) (i32.gt_u (local.get $c) (i32.const 57))))
        (local.set $now (i64.add (i64.mul (local.get $now) (i64.const 10))
                                 (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $digit)))
    (local.set $hour (i64.rem_u (i64.div_u (local.get $now) (i64.const 3600)) (i64.const 24)))
    (if (i32.and (i64.ge_u (local.get $hour) (i64.const 8)) (i64.lt_u (local.get $hour) (i64.const 18)))
      (then (return (call $answer (i32.const 32) (i32.const 45)))))
    ;; after hours: keep the `...:read` scopes
    (call $emit (i32.const 128) (i32.const 57))
    (local.set $i (call $find (local.get $p) (local.get $n) (i32.const 16) (i32.const 10)))
    (if (i32.lt_s (local.get $i) (i32.const 0)) (then unreachable))
    (local.set $i (i32.add (i32.add (local.get $p) (local.get $i)) (i32.const 10)))
    (local.set $limit (i32.add (local.get $p) (local.get $n)))
    (local.set $first (i32.const 1))
    (block $end_of_list
      (loop $scope
        (br_if $end_of_list (i32.ge_u (local.get $i) (local.get $limit)))
        (local.set $c (i32.load8_u (local.get $i)))
        (br_if $end_of_list (i32.eq (local.get $c) (i32.const 93)))  ;; ]
        (if (i32.eq (local.get $c) (i32.const 34))                     ;; "
          (then
            (local.set $start (local.get $i))
            (local.set $end (i32.add (local.get $i) (i32.const 1)))
            (block $closed
              (loop $char
                (br_if $closed (i32.ge_u (local.get $end) (local.get $limit)))
                (br_if $closed (i32.eq (i32.load8_u (local.get $end)) (i32.const 34)))
                (local.set $end (i32.add (local.get $end) (i32.const 1)))
                (br $char)))
            ;; the scope is [start+1, end); keep it if it ends in ":read"
            (if (i32.and
                  (i32.ge_u (i32.sub (local.get $end) (local.get $start)) (i32.const 6))
                  (call $eq (i32.sub (local.get $end) (i32.const 5)) (i32.const 256) (i32.const 5)))
              (then
                (if (i32.eqz (local.get $first)) (then (call $emit (i32.const 280) (i32.const 1))))
                (local.set $first (i32.const 0))
                (call $emit (local.get $start) (i32.add (i32.sub (local.get $end) (local.get $start)) (i32.const 1)))))
            (local.set $i (local.get $end))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scope)))
    (call $emit (i32.const 272) (i32.const 2))
    (call $answer (i32.const 65536) (i32.sub (global.get $out) (i32.const 65536))))
)

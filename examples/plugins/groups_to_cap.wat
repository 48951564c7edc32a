;; groups_to_cap: a `map_upstream_claims` plugin (meshgate plugin ABI 1, see plugins/ABI.md).
;;
;; During token exchange of an upstream token, each string of the upstream `groups` claim becomes a
;; capability `{"with": <the token's first audience>, "can": "group:<name>"}` on the local token.
;; A token without `groups` is allowed unchanged.
;;
;; Build, sign and install:
;;   meshgate plugin build examples/plugins/groups_to_cap.wat -o groups_to_cap.wasm
;;   meshgate plugin sign groups_to_cap.wasm --key dev.key --name groups-to-cap \
;;       --plugin-version 1.0.0 --hook map_upstream_claims
;;   meshgate plugin install groups_to_cap.wasm --all-clients
(module
  (memory (export "memory") 4)
  (global $out (mut i32) (i32.const 65536))
  (data (i32.const 0) "\"groups\":[")
  (data (i32.const 16) "\"audiences\":[\"")
  (data (i32.const 32) "{\"decision\":\"allow\"}")
  (data (i32.const 64) "{\"decision\":\"allow\",\"cap\":[")
  (data (i32.const 96) "{\"with\":\"")
  (data (i32.const 112) "\",\"can\":\"group:")
  (data (i32.const 128) "\"}")
  (data (i32.const 136) "]}")
  (data (i32.const 144) ",")

  (func (export "alloc") (param $len i32) (result i32)
    (if (i32.gt_u (local.get $len) (i32.const 131072)) (then unreachable))
    (i32.const 131072))

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

  ;; The end (offset of the closing quote) of the JSON string whose opening quote is at $i.
  (func $string_end (param $i i32) (param $limit i32) (result i32)
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    (block $closed
      (loop $char
        (br_if $closed (i32.ge_u (local.get $i) (local.get $limit)))
        (br_if $closed (i32.eq (i32.load8_u (local.get $i)) (i32.const 34)))
        ;; skip escaped characters
        (if (i32.eq (i32.load8_u (local.get $i)) (i32.const 92))
          (then (local.set $i (i32.add (local.get $i) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $char)))
    (local.get $i))

  (func (export "map_upstream_claims") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $c i32) (local $limit i32) (local $first i32)
    (local $aud i32) (local $aud_end i32) (local $end i32)
    ;; instances are reused: start the output afresh
    (global.set $out (i32.const 65536))
    (local.set $limit (i32.add (local.get $p) (local.get $n)))
    ;; the first audience
    (local.set $i (call $find (local.get $p) (local.get $n) (i32.const 16) (i32.const 14)))
    (if (i32.lt_s (local.get $i) (i32.const 0)) (then unreachable))
    (local.set $aud (i32.add (i32.add (local.get $p) (local.get $i)) (i32.const 14)))
    (local.set $aud_end (call $string_end (i32.sub (local.get $aud) (i32.const 1)) (local.get $limit)))
    ;; the groups
    (local.set $i (call $find (local.get $p) (local.get $n) (i32.const 0) (i32.const 10)))
    (if (i32.lt_s (local.get $i) (i32.const 0))
      (then (return (i64.or (i64.shl (i64.const 32) (i64.const 32)) (i64.const 20)))))
    (local.set $i (i32.add (i32.add (local.get $p) (local.get $i)) (i32.const 10)))
    (call $emit (i32.const 64) (i32.const 27))
    (local.set $first (i32.const 1))
    (block $end_of_list
      (loop $group
        (br_if $end_of_list (i32.ge_u (local.get $i) (local.get $limit)))
        (local.set $c (i32.load8_u (local.get $i)))
        (br_if $end_of_list (i32.eq (local.get $c) (i32.const 93)))
        (if (i32.eq (local.get $c) (i32.const 34))
          (then
            (local.set $end (call $string_end (local.get $i) (local.get $limit)))
            (if (i32.eqz (local.get $first)) (then (call $emit (i32.const 144) (i32.const 1))))
            (local.set $first (i32.const 0))
            (call $emit (i32.const 96) (i32.const 9))
            (call $emit (local.get $aud) (i32.sub (local.get $aud_end) (local.get $aud)))
            (call $emit (i32.const 112) (i32.const 15))
            (call $emit (i32.add (local.get $i) (i32.const 1)) (i32.sub (i32.sub (local.get $end) (local.get $i)) (i32.const 1)))
            (call $emit (i32.const 128) (i32.const 2))
            (local.set $i (local.get $end))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $group)))
    (call $emit (i32.const 136) (i32.const 2))
    (i64.or (i64.shl (i64.const 65536) (i64.const 32))
            (i64.extend_i32_u (i32.sub (global.get $out) (i32.const 65536)))))
)

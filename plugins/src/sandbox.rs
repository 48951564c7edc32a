//! The wasmtime sandbox: one [`Sandbox`] (engine) per node, a [`Plugin`] per verified module.
//!
//! - **Nothing is imported.** The linker defines no functions: a module that imports anything
//!   (WASI or otherwise) is refused at load, so a plugin has no file system, network or clock.
//! - **Memory** is capped per instance by the pooling allocator's `max_memory_size` and by a
//!   store limiter; growing past it fails inside the plugin (and usually traps it).
//! - **Time** is bounded twice. Fuel: each call gets [`FUEL_PER_MICROSECOND`] units of fuel (about
//!   one WebAssembly operation each) per microsecond of `deadline`, so a plugin is stopped after
//!   the work it could do in its deadline, deterministically — a busy machine that preempts the
//!   thread does not make a well-behaved plugin fail. Epoch interruption backs this up on the wall
//!   clock: a ticker thread advances the engine's epoch every millisecond and a call that is still
//!   running after [`BACKSTOP_FACTOR`] times its deadline (at least 100 ms) is interrupted.
//! - **Instances** come from the pooling allocator, instantiated from a pre-linked
//!   [`wasmtime::InstancePre`], and are kept warm for later calls: up to [`WARM_INSTANCES`] per
//!   plugin, each replaced after [`CALLS_PER_INSTANCE`] calls, after any failed call, or once its
//!   memory grew. (A fresh instance per call cost about three times as much per token.) A plugin
//!   must therefore not rely on its globals or memory being fresh — nor on them persisting.
//!   Compiled modules are cached by digest, so reinstalling a known module does not compile again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::did::DidKey;
use mesh::plugin::PluginManifest;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder,
};

use crate::Error;
use crate::digest::sha256_hex;

/// How often the epoch advances.
const TICK: Duration = Duration::from_millis(1);
/// Instances that may run at once (pool slots).
const POOL_SLOTS: u32 = 64;
/// Fuel per microsecond of deadline (about one WebAssembly operation per nanosecond).
pub const FUEL_PER_MICROSECOND: u64 = 1000;
/// The wall-clock backstop, as a multiple of the deadline.
pub const BACKSTOP_FACTOR: u32 = 20;
/// Bytes of a reused instance's memory reset in place rather than returned to the kernel.
const KEEP_RESIDENT: usize = 1024 * 1024;
/// Largest module accepted.
pub const MAX_MODULE_BYTES: usize = 16 * 1024 * 1024;

/// The limits every call runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory cap of one instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock deadline of one call.
    pub deadline: Duration,
    /// Largest input or output document of a call, in bytes.
    pub max_document_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 * 1024 * 1024,
            deadline: Duration::from_millis(5),
            max_document_bytes: 64 * 1024,
        }
    }
}

/// The engine shared by every plugin of a node, with its compiled-module cache.
pub struct Sandbox {
    engine: Engine,
    limits: Limits,
    compiled: Mutex<HashMap<String, Module>>,
}

impl Sandbox {
    /// An engine enforcing `limits`, with its epoch ticker thread (which ends with the engine).
    pub fn new(limits: Limits) -> Result<Self, Error> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(POOL_SLOTS)
            .total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            .max_memory_size(limits.memory_bytes)
            // Reset a reused slot's first pages with memset rather than madvise: no page faults
            // on the next call (plugins touch a few pages per call).
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .consume_fuel(true)
            .memory_reservation(limits.memory_bytes as u64)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| Error::Engine(e.to_string()))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| Error::Engine(format!("epoch ticker: {e}")))?;
        Ok(Self {
            engine,
            limits,
            compiled: Mutex::new(HashMap::new()),
        })
    }

    /// The limits calls run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Verifies `bytes` against `manifest` (digest, signature, ABI version, signer in `trusted`)
    /// and only then compiles them (or takes the compiled module from the cache) and links them.
    pub fn load(&self, manifest: &PluginManifest, bytes: &[u8], trusted: &BTreeSet<DidKey>) -> Result<Plugin, Error> {
        verify(manifest, bytes, trusted)?;
        let name = manifest.name.clone();
        let bad = |reason: String| Error::BadModule {
            name: name.clone(),
            reason,
        };
        let cached = self.lock_cache().get(&manifest.sha256).cloned();
        let module = match cached {
            Some(module) => module,
            None => {
                let module = Module::from_binary(&self.engine, bytes).map_err(|e| bad(format!("{e:#}")))?;
                self.lock_cache().insert(manifest.sha256.clone(), module.clone());
                module
            }
        };
        if let Some(import) = module.imports().next() {
            return Err(bad(format!(
                "it imports `{}::{}`; plugins are granted no imports",
                import.module(),
                import.name()
            )));
        }
        let mut required: Vec<&str> = vec!["memory", "alloc"];
        required.extend(manifest.hooks.iter().map(String::as_str));
        for export in required {
            if module.get_export(export).is_none() {
                return Err(bad(format!("it does not export `{export}` (see plugins/ABI.md)")));
            }
        }
        let linker: Linker<StoreLimits> = Linker::new(&self.engine);
        let pre = linker.instantiate_pre(&module).map_err(|e| bad(format!("{e:#}")))?;
        Ok(Plugin {
            manifest: Arc::new(manifest.clone()),
            pre,
            engine: self.engine.clone(),
            limits: self.limits,
            warm: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Forgets compiled modules whose digest is not in `keep`.
    pub fn retain(&self, keep: &BTreeSet<String>) {
        self.lock_cache().retain(|digest, _| keep.contains(digest));
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Module>> {
        self.compiled.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Checks a module against its manifest before anything compiles it: size, digest, manifest
/// signature and ABI version, and that the signer is trusted.
pub fn verify(manifest: &PluginManifest, bytes: &[u8], trusted: &BTreeSet<DidKey>) -> Result<(), Error> {
    let name = manifest.name.clone();
    manifest.verify().map_err(|source| Error::BadManifest {
        name: name.clone(),
        source,
    })?;
    if !trusted.contains(&manifest.signer) {
        return Err(Error::UntrustedSigner {
            name,
            signer: manifest.signer,
        });
    }
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(Error::BadModule {
            name,
            reason: format!("{} bytes is more than the {MAX_MODULE_BYTES} allowed", bytes.len()),
        });
    }
    let actual = sha256_hex(bytes);
    if actual != manifest.sha256 {
        return Err(Error::DigestMismatch {
            name,
            expected: manifest.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// A verified, compiled and linked plugin, ready to be called.
#[derive(Clone)]
pub struct Plugin {
    manifest: Arc<PluginManifest>,
    pre: InstancePre<StoreLimits>,
    engine: Engine,
    limits: Limits,
    warm: Arc<Mutex<Vec<Warm>>>,
}

/// An instance kept for later calls.
struct Warm {
    store: Store<StoreLimits>,
    memory: wasmtime::Memory,
    alloc: wasmtime::TypedFunc<i32, i32>,
    instance: wasmtime::Instance,
    initial_bytes: usize,
    calls: u32,
}

/// Instances kept warm per plugin.
const WARM_INSTANCES: usize = 16;
/// Calls an instance serves before it is replaced by a fresh one.
const CALLS_PER_INSTANCE: u32 = 10_000;

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("sha256", &self.manifest.sha256)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The manifest it was loaded from.
    pub fn manifest(&self) -> &PluginManifest {
        &self.manifest
    }

    /// Calls `hook` with the document `input` in a fresh instance and returns the document it
    /// answers (ABI version 1: `alloc(len) -> ptr`, `hook(ptr, len) -> (out_ptr << 32) | out_len`).
    pub fn call(&self, hook: &str, input: &[u8]) -> Result<Vec<u8>, Error> {
        let fail = |reason: String| Error::Call {
            name: self.manifest.name.clone(),
            hook: hook.to_owned(),
            reason,
        };
        if input.len() > self.limits.max_document_bytes {
            return Err(fail(format!("input of {} bytes is too large", input.len())));
        }
        let warm = self
            .warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut warm = match warm {
            Some(warm) => warm,
            None => self.instantiate().map_err(|e| self.trap_error(hook, e))?,
        };
        let fuel = (self.limits.deadline.as_micros() as u64).saturating_mul(FUEL_PER_MICROSECOND);
        warm.store.set_fuel(fuel).map_err(|e| fail(format!("fuel: {e}")))?;
        let backstop = (self.limits.deadline * BACKSTOP_FACTOR).max(Duration::from_millis(100));
        warm.store
            .set_epoch_deadline(backstop.as_micros().div_ceil(TICK.as_micros()) as u64 + 1);
        let output = self.call_in(&mut warm, hook, input)?;
        warm.calls += 1;
        // Keep the instance unless it has served its share or grew its memory.
        if warm.calls < CALLS_PER_INSTANCE && warm.memory.data_size(&warm.store) <= warm.initial_bytes {
            let mut pool = self.warm.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if pool.len() < WARM_INSTANCES {
                pool.push(warm);
            }
        }
        Ok(output)
    }

    fn instantiate(&self) -> Result<Warm, wasmtime::Error> {
        let limiter = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(1)
            .memories(1)
            .tables(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine, limiter);
        store.limiter(|limits| limits);
        // A start function runs under the same bounds as a call.
        store.set_fuel((self.limits.deadline.as_micros() as u64).saturating_mul(FUEL_PER_MICROSECOND))?;
        let backstop = (self.limits.deadline * BACKSTOP_FACTOR).max(Duration::from_millis(100));
        store.set_epoch_deadline(backstop.as_micros().div_ceil(TICK.as_micros()) as u64 + 1);
        let instance = self.pre.instantiate(&mut store)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| wasmtime::Error::msg("exports no memory"))?;
        let alloc = instance.get_typed_func::<i32, i32>(&mut store, "alloc")?;
        let initial_bytes = memory.data_size(&store);
        Ok(Warm {
            store,
            memory,
            alloc,
            instance,
            initial_bytes,
            calls: 0,
        })
    }

    fn trap_error(&self, hook: &str, e: wasmtime::Error) -> Error {
        let fail = |reason: String| Error::Call {
            name: self.manifest.name.clone(),
            hook: hook.to_owned(),
            reason,
        };
        let deadline = self.limits.deadline;
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::OutOfFuel) => fail(format!("ran past its deadline of {deadline:?} (out of fuel)")),
            Some(wasmtime::Trap::Interrupt) => {
                fail(format!("ran past its deadline of {deadline:?} (wall-clock backstop)"))
            }
            Some(wasmtime::Trap::AllocationTooLarge) => self.memory_error(hook),
            _ if format!("{e:#}").contains("growing memory") => self.memory_error(hook),
            _ => fail(format!("trapped: {e:#}")),
        }
    }

    fn memory_error(&self, hook: &str) -> Error {
        Error::Call {
            name: self.manifest.name.clone(),
            hook: hook.to_owned(),
            reason: format!(
                "exceeded its memory cap of {} MiB",
                self.limits.memory_bytes / (1024 * 1024)
            ),
        }
    }

    /// One call in `warm`; any error leaves the instance unusable (the caller drops it).
    fn call_in(&self, warm: &mut Warm, hook: &str, input: &[u8]) -> Result<Vec<u8>, Error> {
        let fail = |reason: String| Error::Call {
            name: self.manifest.name.clone(),
            hook: hook.to_owned(),
            reason,
        };
        let trap = |e: wasmtime::Error| self.trap_error(hook, e);
        let Warm {
            store,
            memory,
            alloc,
            instance,
            ..
        } = warm;
        let (memory, alloc) = (*memory, alloc.clone());
        let function = instance
            .get_typed_func::<(i32, i32), i64>(&mut *store, hook)
            .map_err(|e| fail(format!("{e}")))?;
        let mut store = &mut *store;
        let len = i32::try_from(input.len()).map_err(|_| fail("input too large".into()))?;
        let ptr = alloc.call(&mut store, len).map_err(trap)?;
        memory
            .write(&mut store, ptr as u32 as usize, input)
            .map_err(|_| fail(format!("alloc returned {ptr}, outside its memory")))?;
        let packed = function.call(&mut store, (ptr, len)).map_err(trap)? as u64;
        let (out_ptr, out_len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        if out_len > self.limits.max_document_bytes {
            return Err(fail(format!(
                "output of {out_len} bytes is larger than the {} allowed",
                self.limits.max_document_bytes
            )));
        }
        let mut output = vec![0; out_len];
        memory
            .read(&store, out_ptr, &mut output)
            .map_err(|_| fail("output lies outside its memory".into()))?;
        Ok(output)
    }
}

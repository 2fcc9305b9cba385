//! The Rust side of the C++ shim over libgloo (src/shim/gloo_shim.cc): the C ABI declarations, the store
//! callbacks the shim's rendezvous calls, and [`GlooComm`], one connected gloo context.
//!
//! Every shim function returns NULL or a malloc'd C++ exception message; callbacks never unwind into C++.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::TcpStore;

/// Element kinds understood by the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
}

type SetFn = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    usize,
    *const c_char,
    usize,
    *mut c_void,
) -> c_int;
type GetFn =
    unsafe extern "C" fn(*mut c_void, *const c_char, usize, *mut c_void, *mut c_void) -> c_int;
type WaitFn = unsafe extern "C" fn(*mut c_void, *const c_char, usize, i64, *mut c_void) -> c_int;

#[repr(C)]
struct StoreVtable {
    store: *mut c_void,
    set: SetFn,
    get: GetFn,
    wait: WaitFn,
    default_timeout_ms: i64,
}

unsafe extern "C" {
    fn ftg_vec_assign(vec: *mut c_void, data: *const c_char, len: usize);
    fn ftg_free_error(err: *mut c_char);
    fn ftg_group_new(
        rank: c_int,
        size: c_int,
        hostname: *const c_char,
        prefix: *const c_char,
        vtable: StoreVtable,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn ftg_group_free(group: *mut c_void);
    fn ftg_allreduce_sum(
        group: *mut c_void,
        kind: c_int,
        ptr: *mut c_void,
        n: usize,
    ) -> *mut c_char;
    fn ftg_allgather(
        group: *mut c_void,
        kind: c_int,
        input: *const c_void,
        output: *mut c_void,
        n_per_rank: usize,
    ) -> *mut c_char;
    fn ftg_broadcast(
        group: *mut c_void,
        kind: c_int,
        ptr: *mut c_void,
        n: usize,
        root: c_int,
    ) -> *mut c_char;
    fn ftg_barrier(group: *mut c_void) -> *mut c_char;
}

/// Turns a shim return value into a Result, freeing the message.
fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim, freed exactly once here.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { ftg_free_error(err) };
    Err(msg)
}

/// Runs a callback body, reporting errors and panics through the shim's `err` vector.
///
/// # Safety
/// `err` must be the `std::vector<char>*` the shim passed in.
unsafe fn callback(err: *mut c_void, f: impl FnOnce() -> Result<(), String>) -> c_int {
    let msg = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return 0,
        Ok(Err(m)) => m,
        Err(_) => "panic in the rendezvous store callback".to_string(),
    };
    // SAFETY: per the contract above.
    unsafe { ftg_vec_assign(err, msg.as_ptr().cast(), msg.len()) };
    1
}

/// # Safety
/// `ptr` must point to `len` readable bytes (or be anything when `len` is 0).
unsafe fn bytes<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        // SAFETY: per the contract above.
        unsafe { std::slice::from_raw_parts(ptr.cast(), len) }
    }
}

unsafe extern "C" fn store_set(
    store: *mut c_void,
    key: *const c_char,
    key_len: usize,
    data: *const c_char,
    len: usize,
    err: *mut c_void,
) -> c_int {
    // SAFETY: `store` is the TcpStore behind the Arc held by GlooComm; the shim passes valid buffers.
    unsafe {
        let store = &*(store as *const TcpStore);
        let (key, data) = (bytes(key, key_len), bytes(data, len));
        callback(err, || store.set(key, data).map_err(|e| e.to_string()))
    }
}

unsafe extern "C" fn store_get(
    store: *mut c_void,
    key: *const c_char,
    key_len: usize,
    out: *mut c_void,
    err: *mut c_void,
) -> c_int {
    // SAFETY: as in store_set; `out` is a std::vector<char>* from the shim. The shim waited for the key
    // already, so a short deadline suffices.
    unsafe {
        let store = &*(store as *const TcpStore);
        let key = bytes(key, key_len);
        callback(err, || {
            let v = store
                .get(key, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            ftg_vec_assign(out, v.as_ptr().cast(), v.len());
            Ok(())
        })
    }
}

unsafe extern "C" fn store_wait(
    store: *mut c_void,
    key: *const c_char,
    key_len: usize,
    timeout_ms: i64,
    err: *mut c_void,
) -> c_int {
    // SAFETY: as in store_set.
    unsafe {
        let store = &*(store as *const TcpStore);
        let key = bytes(key, key_len);
        let timeout = Duration::from_millis(timeout_ms.max(0) as u64);
        callback(err, || {
            store
                .get(key, timeout)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// One connected gloo context (full mesh over TCP). Calls are serialised by a mutex.
pub struct GlooComm {
    ptr: Mutex<*mut c_void>,
    _store: Arc<TcpStore>,
}

// SAFETY: the context is only touched under the mutex, one call at a time.
unsafe impl Send for GlooComm {}
unsafe impl Sync for GlooComm {}

impl std::fmt::Debug for GlooComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GlooComm")
    }
}

impl GlooComm {
    /// Rendezvous of `size` ranks through `store` under the key prefix `prefix`; this rank's peers reach
    /// it at `hostname` ("" = the machine's hostname).
    pub fn connect(
        rank: usize,
        size: usize,
        hostname: &str,
        prefix: &str,
        store: Arc<TcpStore>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let host = CString::new(hostname).map_err(|e| e.to_string())?;
        let prefix = CString::new(prefix).map_err(|e| e.to_string())?;
        let vtable = StoreVtable {
            store: Arc::as_ptr(&store) as *mut c_void,
            set: store_set,
            get: store_get,
            wait: store_wait,
            default_timeout_ms: timeout.as_millis() as i64,
        };
        let mut out = std::ptr::null_mut();
        // SAFETY: valid C strings; the store outlives the call (and the context, held in `_store`).
        check(unsafe {
            ftg_group_new(
                rank as c_int,
                size as c_int,
                host.as_ptr(),
                prefix.as_ptr(),
                vtable,
                timeout.as_millis() as i64,
                &mut out,
            )
        })?;
        Ok(GlooComm {
            ptr: Mutex::new(out),
            _store: store,
        })
    }

    fn with<R>(&self, f: impl FnOnce(*mut c_void) -> R) -> R {
        let g = self.ptr.lock().unwrap_or_else(|p| p.into_inner());
        f(*g)
    }

    /// # Safety
    /// `ptr` must address `n` writable elements of kind `elem`.
    pub unsafe fn allreduce_sum(
        &self,
        elem: Elem,
        ptr: *mut c_void,
        n: usize,
    ) -> Result<(), String> {
        // SAFETY: per the contract above; the context pointer is live until drop.
        self.with(|g| check(unsafe { ftg_allreduce_sum(g, elem as c_int, ptr, n) }))
    }

    /// # Safety
    /// `input` must address `n` elements and `output` `n * size` writable elements of kind `elem`.
    pub unsafe fn allgather(
        &self,
        elem: Elem,
        input: *const c_void,
        output: *mut c_void,
        n: usize,
    ) -> Result<(), String> {
        // SAFETY: per the contract above.
        self.with(|g| check(unsafe { ftg_allgather(g, elem as c_int, input, output, n) }))
    }

    /// # Safety
    /// `ptr` must address `n` writable elements of kind `elem`.
    pub unsafe fn broadcast(
        &self,
        elem: Elem,
        ptr: *mut c_void,
        n: usize,
        root: usize,
    ) -> Result<(), String> {
        // SAFETY: per the contract above.
        self.with(|g| check(unsafe { ftg_broadcast(g, elem as c_int, ptr, n, root as c_int) }))
    }

    pub fn barrier(&self) -> Result<(), String> {
        // SAFETY: the context pointer is live until drop.
        self.with(|g| check(unsafe { ftg_barrier(g) }))
    }
}

impl Drop for GlooComm {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: created by ftg_group_new, freed once.
        unsafe { ftg_group_free(p) };
    }
}

//! Coarse, deterministic parallelism for kernels.
//!
//! One process-wide thread count ([`set_threads`]; default `MODULA_THREADS` (or its older
//! name `RAYON_NUM_THREADS`) or all cores) and one helper, [`for_each_chunk_mut`], that splits an output buffer into
//! contiguous chunks, one task each. Every output element is computed by exactly one task
//! with the same code, so results are bit-identical for any thread count. The threads are
//! a small team of our own (`team`): the caller works alongside `threads − 1` helpers,
//! which spin briefly (yielding) between jobs and then sleep — a decode step's products
//! come too often for sleeping workers (measured against rayon's pool: `team`'s notes).
//! Without `std` everything runs on the calling thread.

#[cfg(feature = "std")]
mod team {
    //! A small team of helper threads for the kernels' parallel loops: the calling thread
    //! works too (`threads − 1` helpers), chunks are claimed from an atomic counter, and
    //! idle helpers spin (yielding the CPU) for a short while before they sleep. Decode
    //! issues a parallel product every few hundred microseconds; with rayon's pool, whose
    //! workers sleep when idle and whose caller blocks, each product cost about seven
    //! context switches (measured: 3,886 in a 64-token Q8_0 decode on 2 threads, 7.4 ms
    //! per token against 5.4 ms on one thread; `docs/results.md`).
    use std::cell::{Cell, UnsafeCell};
    use std::format;
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex, TryLockError};
    use std::time::{Duration, Instant};
    use std::vec::Vec;

    std::thread_local! {
        static IN_TEAM: Cell<bool> = const { Cell::new(false) };
    }

    /// True on a helper thread, and on the calling thread while it runs a team job: nested
    /// parallel loops then run on the current thread.
    pub(super) fn in_team() -> bool {
        IN_TEAM.with(|c| c.get())
    }

    /// Run `f` marked as inside a parallel loop (nested loops run in place and
    /// `threads()` is 1), restoring the previous mark afterwards, also on a panic.
    pub(super) fn as_in_team(f: impl FnOnce()) {
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                IN_TEAM.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(IN_TEAM.with(|c| c.replace(true)));
        f();
    }

    /// The job of one generation: `f(i)` for every `i < count`. The closure's lifetime is
    /// erased; [`Team::run`] does not return before every helper is done with it.
    type JobFn = *const (dyn Fn(usize) + Sync + 'static);

    struct Shared {
        /// Bumped once per job (and once to quit).
        gen: AtomicU64,
        /// Written by the caller before it bumps `gen`, read by helpers after they see it.
        job: UnsafeCell<Option<(JobFn, usize)>>,
        next: AtomicUsize,
        /// Chunks taken (jobs of at most 64 chunks).
        claimed: AtomicU64,
        /// Helpers not yet done with the current generation.
        pending: AtomicUsize,
        panicked: AtomicBool,
        quit: AtomicBool,
        sleepers: AtomicUsize,
        lock: Mutex<()>,
        wake: Condvar,
        spin: Duration,
    }

    // SAFETY: `job` is written only by the one caller holding `Team::busy`, while no helper
    // reads it (all helpers have finished the previous generation: `pending` is 0), and
    // read by helpers only between seeing a new `gen` (SeqCst) and decrementing `pending`
    // (Release), after which the caller may write it again (Acquire). The closure it points
    // to is `Sync`.
    unsafe impl Sync for Shared {}
    // SAFETY: as above; the raw pointer is only dereferenced under that protocol.
    unsafe impl Send for Shared {}

    impl Shared {
        /// Claim and run chunks of the current job until none are left. Participant `id`
        /// of `of` first takes the chunks `id, id + of, …` (the same thread gets the same
        /// rows of a matrix on every call, so its caches keep them), then any still
        /// unclaimed (a helper that is late or asleep delays nobody).
        fn work(&self, id: usize, of: usize, f: &(dyn Fn(usize) + Sync), count: usize) {
            if count <= 64 {
                let claim = |i: usize| {
                    let bit = 1u64 << i;
                    self.claimed.fetch_or(bit, Ordering::Relaxed) & bit == 0
                };
                for i in (id..count).step_by(of.max(1)) {
                    if claim(i) {
                        f(i);
                    }
                }
                for i in 0..count {
                    if claim(i) {
                        f(i);
                    }
                }
                return;
            }
            loop {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                f(i);
            }
        }
    }

    pub(super) struct Team {
        shared: Arc<Shared>,
        helpers: Vec<std::thread::JoinHandle<()>>,
        busy: Mutex<()>,
    }

    /// How long an idle helper keeps looking for work before it sleeps: long enough to
    /// bridge the serial work between two products of a decode step, short enough that a
    /// finished burst stops using the CPU at once. `MODULA_SPIN_US` overrides it.
    const SPIN_DEFAULT: Duration = Duration::from_micros(1000);

    impl Team {
        /// A team for `threads` threads in all (the caller and `threads − 1` helpers); None
        /// if no helper could be started.
        pub(super) fn new(threads: usize) -> Option<Team> {
            let spin = std::env::var("MODULA_SPIN_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(SPIN_DEFAULT, Duration::from_micros);
            let shared = Arc::new(Shared {
                gen: AtomicU64::new(0),
                job: UnsafeCell::new(None),
                next: AtomicUsize::new(0),
                claimed: AtomicU64::new(0),
                pending: AtomicUsize::new(0),
                panicked: AtomicBool::new(false),
                quit: AtomicBool::new(false),
                sleepers: AtomicUsize::new(0),
                lock: Mutex::new(()),
                wake: Condvar::new(),
                spin,
            });
            let mut helpers = Vec::new();
            for h in 1..threads.max(1) {
                let s = shared.clone();
                match std::thread::Builder::new()
                    .name(format!("modula-kernel-{h}"))
                    .spawn(move || helper(&s, h, threads))
                {
                    Ok(j) => helpers.push(j),
                    Err(_) => break,
                }
            }
            if helpers.is_empty() {
                return None;
            }
            Some(Team {
                shared,
                helpers,
                busy: Mutex::new(()),
            })
        }

        /// Run `f(i)` for `i < count` on the caller and the helpers; false (nothing run)
        /// if another thread is using the team. A panic in `f` is raised here once every
        /// thread has left the job.
        pub(super) fn run(&self, count: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
            let _guard = match self.busy.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return false,
            };
            let s = &*self.shared;
            // SAFETY: only the lifetime is erased: the pointer is not used after this
            // function returns (every helper decrements `pending` after its last use,
            // and we wait for 0 below, also when `f` panics here).
            let erased: JobFn =
                unsafe { core::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), JobFn>(f) };
            // SAFETY: no helper reads `job` now (see `Shared`'s Sync).
            unsafe { *s.job.get() = Some((erased, count)) };
            s.next.store(0, Ordering::Relaxed);
            s.claimed.store(0, Ordering::Relaxed);
            s.panicked.store(false, Ordering::Relaxed);
            s.pending.store(self.helpers.len(), Ordering::Relaxed);
            s.gen.fetch_add(1, Ordering::SeqCst);
            if s.sleepers.load(Ordering::SeqCst) > 0 {
                let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.wake.notify_all();
            }
            IN_TEAM.with(|c| c.set(true));
            let of = self.helpers.len() + 1;
            let mine = catch_unwind(AssertUnwindSafe(|| s.work(0, of, f, count)));
            IN_TEAM.with(|c| c.set(false));
            let mut spins = 0u32;
            while s.pending.load(Ordering::Acquire) != 0 {
                if spins < 256 {
                    spins += 1;
                    core::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            // SAFETY: every helper is done with this generation.
            unsafe { *s.job.get() = None };
            if let Err(p) = mine {
                resume_unwind(p);
            }
            if s.panicked.load(Ordering::Relaxed) {
                panic!("a parallel kernel task panicked on a helper thread");
            }
            true
        }
    }

    impl Drop for Team {
        fn drop(&mut self) {
            let s = &*self.shared;
            s.quit.store(true, Ordering::SeqCst);
            s.gen.fetch_add(1, Ordering::SeqCst);
            {
                let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.wake.notify_all();
            }
            for h in self.helpers.drain(..) {
                let _ = h.join();
            }
        }
    }

    fn helper(s: &Shared, id: usize, of: usize) {
        IN_TEAM.with(|c| c.set(true));
        let mut seen = 0u64;
        loop {
            // wait for the next generation: spin (yielding) for `spin`, then sleep
            let start = Instant::now();
            let mut polls = 0u32;
            loop {
                let g = s.gen.load(Ordering::SeqCst);
                if g != seen {
                    seen = g;
                    break;
                }
                polls += 1;
                if polls.is_multiple_of(64) {
                    if start.elapsed() >= s.spin {
                        let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                        s.sleepers.fetch_add(1, Ordering::SeqCst);
                        while s.gen.load(Ordering::SeqCst) == seen {
                            l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                        }
                        s.sleepers.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    std::thread::yield_now();
                } else {
                    core::hint::spin_loop();
                }
            }
            if s.quit.load(Ordering::SeqCst) {
                return;
            }
            // SAFETY: a new generation was published (SeqCst) with its job written before;
            // the caller keeps the closure alive until `pending` reaches 0.
            if let Some((f, count)) = unsafe { *s.job.get() } {
                // SAFETY: as above.
                let f: &(dyn Fn(usize) + Sync) = unsafe { &*f };
                if catch_unwind(AssertUnwindSafe(|| s.work(id, of, f, count))).is_err() {
                    s.panicked.store(true, Ordering::Relaxed);
                }
            }
            s.pending.fetch_sub(1, Ordering::Release);
        }
    }
}

#[cfg(feature = "std")]
mod imp {
    use super::team::{in_team, Team};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    static REQUESTED: AtomicUsize = AtomicUsize::new(0);
    static TEAM: Mutex<Option<(usize, Arc<Team>)>> = Mutex::new(None);

    /// The most threads a team may have.
    pub const MAX_THREADS: usize = 1024;

    /// The thread count the environment asks for: `MODULA_THREADS`, else (the older name)
    /// `RAYON_NUM_THREADS`; `Ok(None)` when neither is set; an error naming the variable
    /// when it is not a count in `1..=MAX_THREADS` (a library caller falls back to all
    /// cores; the command line refuses it).
    pub fn env_threads() -> Result<Option<usize>, std::string::String> {
        for var in ["MODULA_THREADS", "RAYON_NUM_THREADS"] {
            if let Ok(v) = std::env::var(var) {
                return match v.trim().parse::<usize>() {
                    Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(Some(n)),
                    _ => Err(std::format!(
                        "{var}={v:?}: not a thread count in 1..={MAX_THREADS}"
                    )),
                };
            }
        }
        Ok(None)
    }

    /// Set the number of threads kernels may use (0 = default: `MODULA_THREADS` — or
    /// `RAYON_NUM_THREADS` — as it was at the first call, else all cores; at most
    /// [`MAX_THREADS`]). Takes effect at the next parallel kernel call.
    pub fn set_threads(n: usize) {
        REQUESTED.store(n.min(MAX_THREADS), Ordering::Relaxed);
    }

    /// The thread count kernels use (1 inside a parallel kernel: nested loops run on the
    /// current thread).
    pub fn threads() -> usize {
        if in_team() {
            return 1;
        }
        // the default is read once: `std::env::var` allocates, and this runs on every
        // product of a decode step
        static DEFAULT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        match REQUESTED.load(Ordering::Relaxed) {
            0 => *DEFAULT.get_or_init(|| {
                env_threads()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            }),
            n => n,
        }
    }

    fn team() -> Option<Arc<Team>> {
        let n = threads();
        if n <= 1 {
            return None;
        }
        let mut guard = TEAM.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((m, t)) = guard.as_ref() {
            if *m == n {
                return Some(t.clone());
            }
        }
        // the old team (if any) stops once its last user lets go of it
        let t = Arc::new(Team::new(n)?);
        *guard = Some((n, t.clone()));
        Some(t)
    }

    /// Run `f(i)` for `i < count`, spread over the team when there is one and it is free
    /// (another thread using it, or a single chunk: on the current thread). A loop of
    /// several chunks that runs on the current thread because the team is busy still
    /// counts as a parallel loop for what it calls: `threads()` is 1 inside it, as on
    /// the team (a CI run under qemu caught `threads()` = 2 there while another test
    /// held the team).
    fn run(count: usize, f: &(dyn Fn(usize) + Sync)) {
        if count > 1 {
            if let Some(t) = team() {
                if t.run(count, f) {
                    return;
                }
                return super::team::as_in_team(|| (0..count).for_each(f));
            }
        }
        (0..count).for_each(f);
    }

    /// A buffer's base pointer, shared by the chunks (each chunk touches only its own
    /// disjoint range).
    struct SendPtr<T>(*mut T);
    // SAFETY: used only to hand disjoint sub-slices of one `&mut [T]` (T: Send) to the
    // threads of one `run`, which ends before the borrow does.
    unsafe impl<T: Send> Sync for SendPtr<T> {}
    impl<T> SendPtr<T> {
        /// Elements `[i·chunk, min((i+1)·chunk, len))`.
        ///
        /// # Safety
        /// `self.0` points to `len` elements borrowed mutably for the call, and no two
        /// live results have the same `i`.
        #[allow(clippy::mut_from_ref)]
        unsafe fn chunk(&self, i: usize, chunk: usize, len: usize) -> &mut [T] {
            let a = i * chunk;
            let b = (a + chunk).min(len);
            // SAFETY: the caller's contract; a < len for every chunk index < count.
            unsafe { std::slice::from_raw_parts_mut(self.0.add(a), b - a) }
        }
    }

    pub(crate) fn for_each_chunk_mut<T: Send>(
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let chunk = chunk.max(1);
        let len = data.len();
        let p = SendPtr(data.as_mut_ptr());
        run(len.div_ceil(chunk), &|i| {
            // SAFETY: each index is run exactly once, and chunk i is its own range of
            // `data`, which stays borrowed until `run` returns.
            let c = unsafe { p.chunk(i, chunk, len) };
            f(i, c)
        });
    }

    pub(crate) fn for_each_chunk_pair_mut<T: Send, U: Send>(
        a: &mut [T],
        ca: usize,
        b: &mut [U],
        cb: usize,
        f: impl Fn(usize, &mut [T], &mut [U]) + Sync,
    ) {
        let (ca, cb) = (ca.max(1), cb.max(1));
        let (la, lb) = (a.len(), b.len());
        let count = la.div_ceil(ca).min(lb.div_ceil(cb));
        let (pa, pb) = (SendPtr(a.as_mut_ptr()), SendPtr(b.as_mut_ptr()));
        // SAFETY: as in `for_each_chunk_mut`, for both buffers.
        run(count, &|i| unsafe {
            f(i, pa.chunk(i, ca, la), pb.chunk(i, cb, lb))
        });
    }

    pub(crate) fn try_for_each_chunk_mut<T: Send, E: Send>(
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) -> Result<(), E> + Sync,
    ) -> Result<(), E> {
        let first: Mutex<Option<(usize, E)>> = Mutex::new(None);
        for_each_chunk_mut(data, chunk, |i, c| {
            if let Err(e) = f(i, c) {
                let mut g = first.lock().unwrap_or_else(|e| e.into_inner());
                if g.as_ref().is_none_or(|(j, _)| i < *j) {
                    *g = Some((i, e));
                }
            }
        });
        match first.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(not(feature = "std"))]
mod imp {
    /// Without `std` kernels run on the calling thread; the setting is ignored.
    pub fn set_threads(_n: usize) {}

    /// Always 1 without `std`.
    pub fn threads() -> usize {
        1
    }

    pub(crate) fn for_each_chunk_mut<T: Send>(
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        data.chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(i, c)| f(i, c))
    }

    pub(crate) fn for_each_chunk_pair_mut<T: Send, U: Send>(
        a: &mut [T],
        ca: usize,
        b: &mut [U],
        cb: usize,
        f: impl Fn(usize, &mut [T], &mut [U]) + Sync,
    ) {
        a.chunks_mut(ca.max(1))
            .zip(b.chunks_mut(cb.max(1)))
            .enumerate()
            .for_each(|(i, (x, y))| f(i, x, y))
    }

    pub(crate) fn try_for_each_chunk_mut<T: Send, E: Send>(
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) -> Result<(), E> + Sync,
    ) -> Result<(), E> {
        data.chunks_mut(chunk.max(1))
            .enumerate()
            .try_for_each(|(i, c)| f(i, c))
    }
}

#[cfg(feature = "std")]
pub use imp::{env_threads, MAX_THREADS};
pub use imp::{set_threads, threads};

/// Run `f(chunk_index, chunk)` over `data` split into chunks of `chunk` elements, in
/// parallel when more than one thread is configured.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    imp::for_each_chunk_mut(data, chunk, f)
}

/// [`for_each_chunk_mut`] for fallible work: the error of the lowest-index failing chunk
/// (all chunks run; the first error in chunk order is returned, whatever the scheduling).
pub fn try_for_each_chunk_mut<T: Send, E: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) -> Result<(), E> + Sync,
) -> Result<(), E> {
    imp::try_for_each_chunk_mut(data, chunk, f)
}

/// [`for_each_chunk_mut`] over two buffers at once: chunk `i` of `a` (`ca` elements) goes
/// with chunk `i` of `b` (`cb` elements), e.g. rows of an output and their per-row
/// statistics. Pairs stop at the shorter list of chunks.
pub fn for_each_chunk_pair_mut<T: Send, U: Send>(
    a: &mut [T],
    ca: usize,
    b: &mut [U],
    cb: usize,
    f: impl Fn(usize, &mut [T], &mut [U]) + Sync,
) {
    imp::for_each_chunk_pair_mut(a, ca, b, cb, f)
}

/// Chunk length that splits `n` items over the configured threads, rounded up to a
/// multiple of `align` and at least `min`.
pub fn chunk_for(n: usize, align: usize, min: usize) -> usize {
    let t = threads().max(1);
    let c = n.div_ceil(t).div_ceil(align.max(1)) * align.max(1);
    c.max(min)
}

/// `(0..n).map(f)` collected in index order, the calls spread over the kernel threads.
/// Each result is computed by one call whatever the thread count, so the output is
/// bit-identical for any number of threads.
pub fn map_indexed<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> alloc::vec::Vec<R> {
    let mut out: alloc::vec::Vec<Option<R>> = (0..n).map(|_| None).collect();
    for_each_chunk_mut(&mut out, 1, |i, slot| slot[0] = Some(f(i)));
    // every slot was filled by exactly one call
    out.into_iter().flatten().collect()
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::vec::Vec;

    /// Every chunk index is run exactly once, with its own slice, for many jobs in a row
    /// (the helpers' generation hand-over) and any chunk count.
    #[test]
    fn every_chunk_runs_once_with_its_own_slice() {
        for t in [2, 3] {
            set_threads(t);
            for rep in 0..300usize {
                let len = rep % 37;
                let chunk = 1 + rep % 5;
                let mut data = std::vec![0usize; len];
                let calls = AtomicUsize::new(0);
                for_each_chunk_mut(&mut data, chunk, |i, c| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    for (k, v) in c.iter_mut().enumerate() {
                        *v += i * chunk + k + 1;
                    }
                });
                assert_eq!(calls.into_inner(), len.div_ceil(chunk), "rep {rep}");
                assert!(
                    data.iter().enumerate().all(|(k, &v)| v == k + 1),
                    "rep {rep}"
                );
            }
        }
        set_threads(0);
    }

    #[test]
    fn pairs_and_errors_keep_their_order() {
        set_threads(2);
        let (mut a, mut b) = (std::vec![0u32; 10], std::vec![0u32; 4]);
        for_each_chunk_pair_mut(&mut a, 3, &mut b, 1, |i, x, y| {
            x.fill(i as u32);
            y[0] = x.len() as u32;
        });
        assert_eq!(a, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
        assert_eq!(b, [3, 3, 3, 1]);
        let mut d = std::vec![0u8; 64];
        let r = try_for_each_chunk_mut(&mut d, 4, |i, _| if i % 5 == 3 { Err(i) } else { Ok(()) });
        assert_eq!(r, Err(3));
        assert_eq!(
            map_indexed(9, |i| i * i),
            (0..9).map(|i| i * i).collect::<Vec<_>>()
        );
        set_threads(0);
    }

    /// Inside a parallel loop the thread count is 1 and a nested loop runs in place.
    #[test]
    fn nested_loops_run_in_place() {
        set_threads(2);
        let mut outer = std::vec![0usize; 8];
        for_each_chunk_mut(&mut outer, 1, |i, o| {
            assert_eq!(threads(), 1);
            let mut inner = std::vec![0usize; 5];
            for_each_chunk_mut(&mut inner, 1, |j, v| v[0] = j);
            o[0] = i + inner.iter().sum::<usize>();
        });
        assert_eq!(outer, (0..8).map(|i| i + 10).collect::<Vec<_>>());
        set_threads(0);
    }

    /// A loop that finds the team busy (another thread's loop holds it) runs on its own
    /// thread and still reports 1 thread inside, so its nested loops run in place.
    #[test]
    fn a_loop_that_finds_the_team_busy_runs_in_place_as_one_thread() {
        use std::sync::mpsc;
        set_threads(2);
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let started_tx = std::sync::Mutex::new(started_tx);
        let holder = std::thread::spawn(move || {
            let mut v = std::vec![0u8; 2];
            // chunk 0 (on whichever thread) waits until the main thread has run its loop
            for_each_chunk_mut(&mut v, 1, |i, _| {
                if i == 0 {
                    let _ = started_tx.lock().unwrap().send(());
                    let _ = release_rx.lock().unwrap().recv();
                }
            });
        });
        started_rx.recv().unwrap();
        let mut outer = std::vec![0usize; 4];
        for_each_chunk_mut(&mut outer, 1, |i, o| {
            o[0] = i + 10 * threads();
        });
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(outer, [10, 11, 12, 13]);
        // the mark is gone afterwards
        assert!(!team::in_team());
        set_threads(0);
    }

    /// A panicking task is reported to the caller (whichever thread ran it), and the team
    /// keeps working afterwards.
    #[test]
    fn a_panicking_task_reaches_the_caller() {
        set_threads(2);
        for last in [false, true] {
            let r = std::panic::catch_unwind(|| {
                let mut d = std::vec![0u8; 16];
                for_each_chunk_mut(&mut d, 1, |i, _| {
                    if (last && i == 15) || (!last && i == 0) {
                        panic!("task {i} fails");
                    }
                });
            });
            assert!(r.is_err());
        }
        let mut d = std::vec![0u8; 16];
        for_each_chunk_mut(&mut d, 2, |_, c| c.fill(7));
        assert!(d.iter().all(|&v| v == 7));
        set_threads(0);
    }

    /// Several threads calling at once (one uses the team, the others run in place), and
    /// jobs after the helpers have gone to sleep.
    #[test]
    fn concurrent_callers_and_sleeping_helpers() {
        set_threads(2);
        std::thread::scope(|s| {
            for t in 0..4usize {
                s.spawn(move || {
                    for rep in 0..100usize {
                        let mut d = std::vec![0usize; 50];
                        for_each_chunk_mut(&mut d, 7, |i, c| c.fill(i + t + rep));
                        assert!(d.iter().enumerate().all(|(k, &v)| v == k / 7 + t + rep));
                    }
                });
            }
        });
        for _ in 0..3 {
            // longer than the helpers' spin: they sleep and must be woken
            std::thread::sleep(std::time::Duration::from_millis(5));
            let mut d = std::vec![0u32; 6];
            for_each_chunk_mut(&mut d, 1, |i, c| c[0] = i as u32);
            assert_eq!(d, [0, 1, 2, 3, 4, 5]);
        }
        set_threads(0);
    }
}

//! Coarse, deterministic parallelism for kernels.
//!
//! One process-wide thread count ([`set_threads`]; default `RAYON_NUM_THREADS` or all
//! cores) and one helper, [`for_each_chunk_mut`], that splits an output buffer into
//! contiguous chunks, one task each. Every output element is computed by exactly one task
//! with the same code, so results are bit-identical for any thread count. The pool is
//! rayon's: idle workers sleep rather than spin, which matters on small shared machines.
//! Without `std` everything runs on the calling thread.

#[cfg(feature = "std")]
mod imp {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    static REQUESTED: AtomicUsize = AtomicUsize::new(0);
    static POOL: Mutex<Option<(usize, Arc<rayon::ThreadPool>)>> = Mutex::new(None);

    /// Set the number of threads kernels may use (0 = default). Takes effect at the next
    /// parallel kernel call.
    pub fn set_threads(n: usize) {
        REQUESTED.store(n, Ordering::Relaxed);
    }

    /// The thread count kernels use (1 on a worker thread of the kernel pool itself).
    pub fn threads() -> usize {
        if rayon::current_thread_index().is_some() {
            return 1;
        }
        match REQUESTED.load(Ordering::Relaxed) {
            0 => std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            n => n,
        }
    }

    pub(crate) fn pool() -> Option<Arc<rayon::ThreadPool>> {
        let n = threads();
        // Already inside a parallel kernel (on a pool worker): no nested splitting, which
        // only adds scheduling overhead to work that is already spread over all threads.
        if n <= 1 || rayon::current_thread_index().is_some() {
            return None;
        }
        let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((m, p)) = guard.as_ref() {
            if *m == n {
                return Some(p.clone());
            }
        }
        let p = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .ok()?,
        );
        *guard = Some((n, p.clone()));
        Some(p)
    }

    pub(crate) fn for_each_chunk_mut<T: Send>(
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        use rayon::prelude::*;
        let chunk = chunk.max(1);
        match pool() {
            Some(p) if data.len() > chunk => p.install(|| {
                data.par_chunks_mut(chunk)
                    .enumerate()
                    .for_each(|(i, c)| f(i, c))
            }),
            _ => data
                .chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c)),
        }
    }

    pub(crate) fn for_each_chunk_pair_mut<T: Send, U: Send>(
        a: &mut [T],
        ca: usize,
        b: &mut [U],
        cb: usize,
        f: impl Fn(usize, &mut [T], &mut [U]) + Sync,
    ) {
        use rayon::prelude::*;
        let (ca, cb) = (ca.max(1), cb.max(1));
        match pool() {
            Some(p) if a.len() > ca => p.install(|| {
                a.par_chunks_mut(ca)
                    .zip(b.par_chunks_mut(cb))
                    .enumerate()
                    .for_each(|(i, (x, y))| f(i, x, y))
            }),
            _ => a
                .chunks_mut(ca)
                .zip(b.chunks_mut(cb))
                .enumerate()
                .for_each(|(i, (x, y))| f(i, x, y)),
        }
    }

    pub(crate) fn try_for_each_chunk_mut<T: Send, E: Send>(
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) -> Result<(), E> + Sync,
    ) -> Result<(), E> {
        use rayon::prelude::*;
        let chunk = chunk.max(1);
        match pool() {
            Some(p) if data.len() > chunk => {
                let results: std::vec::Vec<Result<(), E>> = p.install(|| {
                    data.par_chunks_mut(chunk)
                        .enumerate()
                        .map(|(i, c)| f(i, c))
                        .collect()
                });
                results.into_iter().collect()
            }
            _ => data
                .chunks_mut(chunk)
                .enumerate()
                .try_for_each(|(i, c)| f(i, c)),
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

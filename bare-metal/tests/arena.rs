//! The example's generation runs inside its fixed arena: this test binary's global
//! allocator hands every allocation of the watched thread to a `Bump` of `ARENA_BYTES`
//! (others, and the test harness, use the system allocator), so a run that needed more
//! heap than the bare-metal build has would fail here with an allocation error.
#![allow(clippy::unwrap_used)]

use modula_bare_metal::{arena_need, generate, model_bytes, Bump, Error, ARENA_BYTES, CONTEXT};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

static ARENA: Bump<ARENA_BYTES> = Bump::new();

thread_local! {
    static WATCH: Cell<bool> = const { Cell::new(false) };
}

struct Routing;

// SAFETY: each pointer is freed by the allocator whose range it lies in (the arena's
// address range decides), with the layout it was allocated with.
unsafe impl GlobalAlloc for Routing {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if WATCH.with(Cell::get) {
            // SAFETY: same contract as the caller's.
            unsafe { ARENA.alloc(l) }
        } else {
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(l) }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if ARENA.contains(p) {
            // SAFETY: p came from the arena with layout l.
            unsafe { ARENA.dealloc(p, l) }
        } else {
            // SAFETY: p came from the system allocator with layout l.
            unsafe { System.dealloc(p, l) }
        }
    }
}

#[global_allocator]
static A: Routing = Routing;

fn in_arena<T>(f: impl FnOnce() -> T) -> T {
    WATCH.with(|w| w.set(true));
    let r = f();
    WATCH.with(|w| w.set(false));
    r
}

/// Greedy bytes from the hosted engine over the same file (std build of modula-core).
fn hosted(prompt: &[u8], size: (usize, usize), n: usize) -> Vec<u8> {
    let p = std::env::temp_dir().join(format!("modula-bare-{}.gguf", std::process::id()));
    std::fs::write(&p, model_bytes()).unwrap();
    let m = modula_core::Model::open(&p).unwrap();
    let mut e = modula_core::engine::DenseEngine::new(&m, CONTEXT).unwrap();
    e.set_submodel(Some(size)).unwrap();
    let argmax = |l: &[f32]| {
        l.iter()
            .enumerate()
            .fold(0, |b, (j, &v)| if v > l[b] { j } else { b })
    };
    let mut last = 0;
    for &b in prompt {
        last = argmax(e.step(u32::from(b)).unwrap());
    }
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(last as u8);
        last = argmax(e.step(last as u32).unwrap());
    }
    std::fs::remove_file(p).unwrap();
    out
}

#[test]
fn every_nested_size_generates_inside_the_fixed_arena() {
    let prompt = b"The old ";
    // The SIMD level is detected once per process, outside the arena: on a hosted build the
    // first detection may print a warning (MODULA_SIMD asking for more than the CPU has),
    // and stderr's first use keeps thread state alive for good — one-time process set-up,
    // not the generation's memory (the bare-metal build detects at compile time).
    let _ = (
        modula_core::kernels::isa::active(),
        modula_core::kernels::isa::avx512(),
        modula_core::kernels::isa::dotprod(),
    );
    for size in [(1, 32), (1, 64), (2, 32), (2, 64)] {
        let need = arena_need(Some(size)).unwrap();
        assert!(need <= ARENA_BYTES, "{size:?} needs {need}");
        let mut out = [0u8; 24];
        let r = in_arena(|| generate(prompt, Some(size), &mut out));
        assert_eq!(r, Ok(24), "{size:?}");
        assert_eq!(ARENA.live(), 0, "everything is freed");
        assert!(out
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n'));
        // the same bytes as the hosted engine (mmap'd file, std allocator)
        assert_eq!(out.to_vec(), hosted(prompt, size, 24), "{size:?}");
        println!(
            "{size:?}: {:?} (arena peak {} of {ARENA_BYTES} bytes)",
            String::from_utf8_lossy(&out),
            ARENA.peak()
        );
    }
    assert!(ARENA.peak() <= ARENA_BYTES);
    // the full model by default, and the model learnt the text's words
    let mut out = [0u8; 20];
    assert_eq!(in_arena(|| generate(prompt, None, &mut out)), Ok(20));
    let text = String::from_utf8_lossy(&out).to_string();
    assert!(
        text.contains(' ') && text.chars().any(|c| c.is_ascii_lowercase()),
        "{text}"
    );
}

#[test]
fn bad_requests_are_errors() {
    let mut out = [0u8; 8];
    assert_eq!(generate(b"", None, &mut out), Err(Error::Context));
    assert_eq!(generate(&[b'a'; 30], None, &mut out), Err(Error::Context));
    assert_eq!(generate(b"The", Some((3, 64)), &mut out), Err(Error::Size));
    assert_eq!(generate(b"The", Some((1, 65)), &mut out), Err(Error::Size));
    assert_eq!(Error::Arena.code(), -4);
}

#[test]
fn bump_allocator_aligns_reclaims_and_refuses_overflow() {
    let b: Bump<256> = Bump::new();
    // SAFETY: layouts are valid; pointers are freed with their layouts.
    unsafe {
        let l8 = Layout::from_size_align(10, 8).unwrap();
        let l64 = Layout::from_size_align(16, 64).unwrap();
        let p = b.alloc(l8);
        let q = b.alloc(l64);
        assert!(!p.is_null() && !q.is_null());
        assert_eq!(p as usize % 8, 0);
        assert_eq!(q as usize % 64, 0);
        assert!(b.contains(p) && b.contains(q));
        // freeing the newest gives its bytes back: the next allocation reuses them
        b.dealloc(q, l64);
        assert_eq!(b.alloc(l64), q);
        // too big: null, nothing moved
        assert!(b.alloc(Layout::from_size_align(512, 8).unwrap()).is_null());
        b.dealloc(q, l64);
        b.dealloc(p, l8);
        assert_eq!(b.live(), 0);
        // empty again: the first allocation starts at the beginning
        assert_eq!(b.alloc(l8), p);
    }
}

//! Which SIMD instruction set a kernel runs with: detected **once** at run time under
//! `std` (so one binary runs on any CPU of its architecture and uses the best it has), from
//! `cfg(target_feature)` without `std`. `MODULA_SIMD=scalar|avx2|neon` forces a lower level
//! (matrixmultiply's trick), so every variant can be tested and benchmarked on one host; a
//! request for a level the CPU lacks is refused (the best available level is used) — a build
//! never executes an instruction the CPU does not have.
//!
//! Two refinements apply to the quantised products only, as sub-levels of a level rather
//! than levels of their own (every other kernel is the same under them): [`avx512`] under
//! [`Isa::Avx2`] (AVX-512BW, or AVX-512 VNNI; opt-in with `MODULA_SIMD=avx512|avx512-vnni`,
//! since they measured slower than the AVX2 kernels on a real AVX-512 CPU) and [`dotprod`]
//! under [`Isa::Neon`].
//!
//! Every kernel also takes an explicit [`Isa`] in its `*_with` form, which tests use to run
//! all [`available`] variants in one process.

/// A SIMD level. Ordered: a CPU that has a level can run every lower one of its architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable scalar code (the test oracle).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// aarch64 Advanced SIMD (NEON), baseline on every aarch64 CPU.
    Neon,
}

impl Isa {
    /// Lower-case name as used by `MODULA_SIMD`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
        }
    }

    /// Parse a `MODULA_SIMD` value.
    pub fn from_name(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" => Some(Isa::Scalar),
            // the AVX-512 names select the AVX2 level plus a sub-level, see `avx512`
            "avx2" | "avx512" | "avx512-vnni" => Some(Isa::Avx2),
            "neon" | "neon-nodot" => Some(Isa::Neon),
            _ => None,
        }
    }

    /// Whether this CPU can run `self`.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => has_avx2(),
            Isa::Neon => has_neon(),
        }
    }
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}
#[cfg(all(target_arch = "x86_64", not(feature = "std")))]
fn has_avx2() -> bool {
    cfg!(all(
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))
}
#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

#[cfg(target_arch = "aarch64")]
fn has_neon() -> bool {
    // NEON is part of the aarch64 baseline (the `neon` target feature is always on for
    // every aarch64 target Rust supports, including aarch64-unknown-none).
    cfg!(target_feature = "neon")
}
#[cfg(not(target_arch = "aarch64"))]
fn has_neon() -> bool {
    false
}

/// Whether the integer block dot products under [`Isa::Neon`] may use `SDOT` (the Armv8.2
/// `dotprod` extension): detected once at run time under `std`, from
/// `cfg(target_feature)` without. `MODULA_SIMD=neon-nodot` turns it off (to test or
/// measure plain NEON on a CPU that has it).
#[cfg(all(target_arch = "aarch64", feature = "std"))]
pub fn dotprod() -> bool {
    static DOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DOT.get_or_init(|| {
        std::arch::is_aarch64_feature_detected!("dotprod")
            && std::env::var("MODULA_SIMD").map_or(true, |v| v.trim() != "neon-nodot")
    })
}
/// See the `std` version.
#[cfg(all(target_arch = "aarch64", not(feature = "std")))]
pub fn dotprod() -> bool {
    cfg!(target_feature = "dotprod")
}
/// No `dotprod` off aarch64.
#[cfg(not(target_arch = "aarch64"))]
pub fn dotprod() -> bool {
    false
}

/// Which AVX-512 kernels the quantised products use under [`Isa::Avx2`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Avx512 {
    /// None: the AVX2 kernels.
    Off,
    /// AVX-512F/BW/VL (`vpmaddubsw` + `vpmaddwd` over 512 bits).
    Bw,
    /// AVX-512BW plus AVX512-VNNI (`vpdpbusd`).
    Vnni,
}

/// What this CPU has of [`Avx512`] (nothing without the AVX2 level's features).
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn detect_avx512() -> Avx512 {
    use std::is_x86_feature_detected as has;
    if !(has_avx2() && has!("avx512f") && has!("avx512bw") && has!("avx512vl")) {
        Avx512::Off
    } else if has!("avx512vnni") {
        Avx512::Vnni
    } else {
        Avx512::Bw
    }
}

/// The most of [`Avx512`] a `MODULA_SIMD` value allows: `avx512-vnni` everything, `avx512`
/// at most BW, unset or any other value none — the AVX-512 kernels are opt-in because on
/// the one AVX-512 CPU measured (a 16-core Xeon with AMX, 2026-11-29) they were slower than
/// the AVX2 kernels (docs/results.md, "AVX-512 on a real CPU").
pub fn avx512_allowed(simd: Option<&str>) -> Avx512 {
    match simd.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("avx512-vnni") => Avx512::Vnni,
        Some("avx512") => Avx512::Bw,
        _ => Avx512::Off,
    }
}

/// Which AVX-512 kernels the quantised products use under [`Isa::Avx2`]: the most this CPU
/// has that `MODULA_SIMD` allows ([`avx512_allowed`]), detected once under `std`, from
/// `cfg(target_feature)` without. A request for more than the CPU has is refused with a
/// message (the CPU's best is used).
#[cfg(all(target_arch = "x86_64", feature = "std"))]
pub fn avx512() -> Avx512 {
    static LEVEL: std::sync::OnceLock<Avx512> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let simd = std::env::var("MODULA_SIMD").ok();
        let (cpu, allowed) = (detect_avx512(), avx512_allowed(simd.as_deref()));
        if let Some(v) = simd.as_deref() {
            if allowed > cpu && v.trim().to_ascii_lowercase().starts_with("avx512") {
                std::eprintln!(
                    "modula: MODULA_SIMD={v}: this CPU has AVX-512 {:?} only; using that",
                    cpu
                );
            }
        }
        cpu.min(allowed)
    })
}
/// See the `std` version.
#[cfg(all(target_arch = "x86_64", not(feature = "std")))]
pub fn avx512() -> Avx512 {
    let bw = cfg!(all(
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vl"
    ));
    if !bw {
        Avx512::Off
    } else if cfg!(target_feature = "avx512vnni") {
        Avx512::Vnni
    } else {
        Avx512::Bw
    }
}
/// No AVX-512 off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub fn avx512() -> Avx512 {
    Avx512::Off
}

/// Every level this CPU supports, lowest first.
pub fn available() -> impl Iterator<Item = Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::Neon]
        .into_iter()
        .filter(|i| i.is_supported())
}

/// The best level this CPU supports.
pub fn best() -> Isa {
    available().last().unwrap_or(Isa::Scalar)
}

/// `isa`'s name with the sub-level the quantised products run under it in this process
/// (`avx2+avx512vnni`, `neon+dotprod`, ...), for reports: the same [`Isa`] runs different
/// integer kernels on different CPUs.
pub fn label(isa: Isa) -> &'static str {
    match (isa, avx512(), dotprod()) {
        (Isa::Avx2, Avx512::Vnni, _) => "avx2+avx512vnni",
        (Isa::Avx2, Avx512::Bw, _) => "avx2+avx512bw",
        (Isa::Neon, _, true) => "neon+dotprod",
        (i, _, _) => i.name(),
    }
}

/// The level kernels use: the best supported one, or the one `MODULA_SIMD` asks for if the
/// CPU supports it. Decided once per process.
#[cfg(feature = "std")]
pub fn active() -> Isa {
    static ACTIVE: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ACTIVE.get_or_init(|| match std::env::var("MODULA_SIMD") {
        Ok(v) => match Isa::from_name(&v) {
            Some(i) if i.is_supported() => i,
            Some(i) => {
                std::eprintln!(
                    "modula: MODULA_SIMD={v}: this CPU cannot run {}; using {}",
                    i.name(),
                    best().name()
                );
                best()
            }
            None => {
                std::eprintln!(
                    "modula: MODULA_SIMD={v} is not one of scalar, avx2, avx512, avx512-vnni, neon, neon-nodot; ignored"
                );
                best()
            }
        },
        Err(_) => best(),
    })
}

/// The level kernels use (no run-time detection without `std`: compile-time features).
#[cfg(not(feature = "std"))]
pub fn active() -> Isa {
    best()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modula_simd_caps_the_avx512_sub_level() {
        // opt-in: slower than the AVX2 kernels where measured
        assert_eq!(avx512_allowed(None), Avx512::Off);
        assert_eq!(avx512_allowed(Some("avx512-vnni")), Avx512::Vnni);
        assert_eq!(avx512_allowed(Some(" AVX512 ")), Avx512::Bw);
        assert_eq!(avx512_allowed(Some("avx2")), Avx512::Off);
        assert_eq!(avx512_allowed(Some("scalar")), Avx512::Off);
        assert_eq!(avx512_allowed(Some("neon")), Avx512::Off);
        // an unknown value is ignored, as `active` ignores it: the default
        assert_eq!(avx512_allowed(Some("sse9")), Avx512::Off);
    }

    #[test]
    fn scalar_is_always_available_and_best_is_supported() {
        assert!(available().any(|i| i == Isa::Scalar));
        assert!(best().is_supported());
        assert!(active().is_supported());
        for i in [Isa::Scalar, Isa::Avx2, Isa::Neon] {
            assert_eq!(Isa::from_name(i.name()), Some(i));
        }
        assert_eq!(Isa::from_name("sse9"), None);
        assert_eq!(Isa::from_name("avx512"), Some(Isa::Avx2));
        assert_eq!(Isa::from_name("AVX512-VNNI"), Some(Isa::Avx2));
        // the AVX-512 sub-level is never more than the CPU has, and none without AVX2
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        {
            assert!(avx512() <= detect_avx512());
            if !std::is_x86_feature_detected!("avx512bw") {
                assert_eq!(avx512(), Avx512::Off);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(avx512(), Avx512::Off);
        // The SIMD tests must really run the SIMD variant on the platforms CI covers.
        #[cfg(target_arch = "aarch64")]
        assert!(available().any(|i| i == Isa::Neon));
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            assert!(available().any(|i| i == Isa::Avx2));
        }
    }

    #[test]
    fn the_label_names_the_level_and_its_sub_level() {
        assert_eq!(label(Isa::Scalar), "scalar");
        for i in available() {
            let l = label(i);
            assert!(l.starts_with(i.name()), "{l}");
            let sub = match avx512() {
                Avx512::Vnni if i == Isa::Avx2 => "+avx512vnni",
                Avx512::Bw if i == Isa::Avx2 => "+avx512bw",
                _ if i == Isa::Neon && dotprod() => "+dotprod",
                _ => "",
            };
            assert_eq!(&l[i.name().len()..], sub);
        }
    }
}

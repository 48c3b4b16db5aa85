//! Expert paging: the pager's hit/miss bookkeeping is exact, it never keeps more experts
//! than the budget, and the experts it drops really leave the process's resident set —
//! checked through the kernel's own count of resident pages of the model's mapping
//! (`/proc/self/smaps`, Linux).
#![allow(clippy::unwrap_used)]

use modula_core::engine::paging::ExpertPager;
use modula_core::engine::MfEngine;
use modula_core::Model;
use modula_train::model::moduleformer::{MfConfig, MfModel};

/// Resident bytes of the mapping that starts at `base` (Linux), else None.
fn mapping_rss(base: *const u8) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let want = base as usize;
    let mut in_it = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, _)) = range.split_once('-') {
                if let Ok(start) = usize::from_str_radix(a, 16) {
                    if range.contains('-') && !line.starts_with(|c: char| c.is_ascii_uppercase()) {
                        in_it = start == want;
                        continue;
                    }
                }
            }
        }
        if in_it {
            if let Some(v) = line.strip_prefix("Rss:") {
                return v
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .map(|k| k * 1024);
            }
        }
    }
    None
}

#[test]
fn pager_keeps_experts_within_budget_and_counts_exactly() {
    modula_core::kernels::par::set_threads(1);
    // 2 blocks x (16 attention + 16 FFN experts), each expert 64 KiB of f32 weights
    let cfg = MfConfig {
        router_hidden: 0,
        ..MfConfig::lm(256, 64, 2, 16, 128)
    };
    let model = MfModel::new(cfg, 3).unwrap();
    let p = std::env::temp_dir().join(format!("modula-paging-{}.gguf", std::process::id()));
    model.write_gguf(&p, 64, "t").unwrap();
    let m = Model::open(&p).unwrap();
    m.advise_no_readahead().unwrap();
    let mut e = MfEngine::new(&m, 64).unwrap();
    let all = ExpertPager::new(&m, u64::MAX).unwrap().total_bytes();
    let expert = all / 64;
    let shared = m.bytes().len() as u64 - all;
    // one token needs k = 2 experts in each of 4 routers
    let err = ExpertPager::new(&m, 7 * expert).unwrap_err();
    assert!(
        matches!(err, modula_core::Error::Input { .. })
            && err.to_string().contains("impossible expert budget"),
        "{err}"
    );
    let budget = 12 * expert;
    let mut pager = ExpertPager::new(&m, budget).unwrap();
    pager.drop_all().unwrap();
    let steps = 40u64;
    let mut tok = 7u32;
    let mut max_resident = 0;
    for _ in 0..steps {
        let l = e.step(tok).unwrap();
        tok = (l
            .iter()
            .enumerate()
            .fold(0, |b, (j, &v)| if v > l[b] { j } else { b }) as u32
            + 13)
            % 256;
        pager.after_step(&e).unwrap();
        max_resident = max_resident.max(pager.resident_bytes());
        // each router's ranking: the chosen 2 first, then the runners-up, all distinct
        for slot in 0..4 {
            let r = e.ranked(slot);
            assert_eq!(r.len(), 4);
            let mut s = r.to_vec();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), 4);
        }
    }
    let st = pager.stats();
    assert_eq!(st.hits + st.misses, steps * 4 * 2, "{st:?}");
    assert!(max_resident <= budget, "{max_resident} > {budget}");
    assert!(st.evicted > 0 && st.misses > 8, "{st:?}");
    // the kernel agrees: the mapping holds at most the shared tensors and the budget
    if let Some(rss) = mapping_rss(m.bytes().as_ptr()) {
        let page = 4096;
        assert!(
            rss <= shared + budget + 4 * page,
            "mapping RSS {rss} > shared {shared} + budget {budget}"
        );
        // and it did shrink: every expert was touched at some point or prefetched
        pager.drop_all().unwrap();
        let after = mapping_rss(m.bytes().as_ptr()).unwrap();
        assert!(
            after <= shared + page,
            "after dropping all: {after} > {shared}"
        );
    }
    // an unlimited budget: every miss is a first use, nothing is evicted
    let mut free = ExpertPager::new(&m, u64::MAX).unwrap();
    e.reset();
    for t in 0..20u32 {
        e.step(t * 11 % 256).unwrap();
        free.after_step(&e).unwrap();
    }
    let st = free.stats();
    assert_eq!(st.evicted, 0);
    assert_eq!(st.hits + st.misses, 20 * 8);
    assert!(st.misses as u64 * expert <= free.resident_bytes());
    std::fs::remove_file(p).unwrap();
}

#[test]
fn a_dense_file_has_no_paged_experts() {
    let cfg = modula_train::model::dense::DenseConfig::lm(64, 32, 1, 2, 64);
    let model = modula_train::model::dense::DenseModel::new(cfg, 1).unwrap();
    let p = std::env::temp_dir().join(format!("modula-paging-dense-{}.gguf", std::process::id()));
    model.write_gguf(&p, 16, "t").unwrap();
    let m = Model::open(&p).unwrap();
    let err = ExpertPager::new(&m, 1 << 20).unwrap_err();
    assert!(!err.to_string().is_empty(), "{err}");
    std::fs::remove_file(p).unwrap();
}

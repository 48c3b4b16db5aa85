//! Expert paging under a memory budget (std, mapped files): a ModuleFormer file keeps each
//! expert in its own page-aligned page group, so the experts a process holds resident
//! can be chosen expert by expert. [`ExpertPager`] keeps a resident set of experts within a
//! byte budget: after every decode step it records the experts the routers chose (hit:
//! already resident; miss: it had to be read), asks the OS to read in the routers'
//! runners-up (`MADV_WILLNEED`, the likeliest next choices) while the budget allows, and
//! drops the least recently used experts beyond the budget (`MADV_DONTNEED`).
//!
//! The resident set is Modula's bookkeeping of what it keeps mapped in; the kernel's page
//! cache may keep the file's pages too (a miss then costs a page-cache copy, not a disk
//! read). Peak memory follows the budget because dropped experts leave the process's
//! resident set (checked in the tests through `/proc/self/smaps`).

use super::moduleformer::{MfEngine, MfSpec};
use crate::error::Error;
use crate::Model;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

/// Counters of an [`ExpertPager`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagerStats {
    /// Chosen experts that were resident.
    pub hits: u64,
    /// Chosen experts that were not.
    pub misses: u64,
    /// Runners-up read in ahead of use.
    pub prefetched: u64,
    /// Of those, later chosen while still resident.
    pub prefetch_used: u64,
    /// Experts dropped to stay within the budget.
    pub evicted: u64,
}

/// The resident set of experts of one mapped ModuleFormer file (see the module docs).
#[derive(Debug)]
pub struct ExpertPager<'a> {
    model: &'a Model<memmap2::Mmap>,
    /// Per router slot (block-major, attention then FFN): the first expert's index.
    slot_base: Vec<usize>,
    /// Per expert: its page group's (offset, length).
    groups: Vec<(usize, usize)>,
    /// Per expert: the step it was last used (0 = not resident).
    last_use: Vec<u64>,
    /// Per expert: read in by prefetch and not chosen since.
    ahead: Vec<bool>,
    /// Per expert: read in during the current step.
    fresh: Vec<bool>,
    /// The experts read in during the current step (the `fresh` ones, in order).
    fresh_list: Vec<usize>,
    /// Experts by file offset (for the fault-around sweep: a binary search, not a scan).
    by_offset: Vec<usize>,
    /// The resident experts as (last use, index): the least recently used first.
    lru: BTreeSet<(u64, usize)>,
    resident: u64,
    budget: u64,
    /// Bytes one token's experts can need (the `k` largest of every router).
    need: u64,
    clock: u64,
    stats: PagerStats,
}

impl<'a> ExpertPager<'a> {
    /// A pager for `model` (a ModuleFormer file with one page group per expert) keeping at
    /// most `budget` bytes of experts resident. Refuses a budget below what one token
    /// needs (the `k` largest experts of every router), naming it.
    pub fn new(model: &'a Model<memmap2::Mmap>, budget: u64) -> Result<Self, Error> {
        let s = MfSpec::from_model(model)?;
        // page groups by name, once (not a scan of every group per expert)
        let by_name: BTreeMap<&str, core::ops::Range<usize>> =
            model.page_groups().map(|g| (g.name(), g.range())).collect();
        let mut slot_base = Vec::with_capacity(2 * s.layers);
        let mut groups = Vec::new();
        let mut need = 0u64;
        for l in 0..s.layers {
            for (kind, count, k) in [
                ("attn_expert", s.att_experts, s.att_k),
                ("ffn_expert", s.ffn_experts, s.ffn_k),
            ] {
                slot_base.push(groups.len());
                let mut sizes = Vec::with_capacity(count);
                for e in 0..count {
                    let name = alloc::format!("blk.{l}.{kind}.{e}");
                    let r = by_name.get(name.as_str()).cloned().ok_or_else(|| {
                        Error::unsupported(alloc::format!(
                            "no page group {name}: the experts are not paged in this file"
                        ))
                    })?;
                    groups.push((r.start, r.end - r.start));
                    sizes.push((r.end - r.start) as u64);
                }
                sizes.sort_unstable_by(|a, b| b.cmp(a));
                need += sizes.iter().take(k).sum::<u64>();
            }
        }
        let n = groups.len();
        let mut by_offset: Vec<usize> = (0..n).collect();
        by_offset.sort_by_key(|&i| groups[i].0);
        let mut p = ExpertPager {
            model,
            slot_base,
            groups,
            last_use: alloc::vec![0; n],
            ahead: alloc::vec![false; n],
            fresh: alloc::vec![false; n],
            fresh_list: Vec::new(),
            by_offset,
            lru: BTreeSet::new(),
            resident: 0,
            budget: u64::MAX,
            need,
            clock: 1,
            stats: PagerStats::default(),
        };
        p.set_budget(budget)?;
        Ok(p)
    }

    /// Change the budget (from the next step on); refused below one token's experts.
    pub fn set_budget(&mut self, budget: u64) -> Result<(), Error> {
        if budget < self.need {
            return Err(Error::input(alloc::format!(
                "impossible expert budget: {:.2} MiB, but one token's experts need {:.2} MiB",
                budget as f64 / 1048576.0,
                self.need as f64 / 1048576.0
            )));
        }
        self.budget = budget;
        Ok(())
    }

    /// Bytes of all experts in the file.
    pub fn total_bytes(&self) -> u64 {
        self.groups.iter().map(|g| g.1 as u64).sum()
    }

    /// Bytes of experts resident now (by the pager's bookkeeping).
    pub fn resident_bytes(&self) -> u64 {
        self.resident
    }

    /// The budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The counters so far.
    pub fn stats(&self) -> PagerStats {
        self.stats
    }

    /// Drop every expert from the resident set (e.g. after a batched prefill, which reads
    /// the experts its tokens chose without the pager).
    pub fn drop_all(&mut self) -> Result<(), Error> {
        for i in 0..self.groups.len() {
            self.drop_expert(i)?;
            self.last_use[i] = 0;
        }
        self.lru.clear();
        self.resident = 0;
        Ok(())
    }

    /// Set expert `i`'s last use (0: not resident), keeping the LRU order in step.
    fn touch(&mut self, i: usize, t: u64) {
        let old = self.last_use[i];
        if old != 0 {
            self.lru.remove(&(old, i));
        }
        if t != 0 {
            self.lru.insert((t, i));
        }
        self.last_use[i] = t;
    }

    fn mark_fresh(&mut self, i: usize) {
        if !self.fresh[i] {
            self.fresh[i] = true;
            self.fresh_list.push(i);
        }
    }

    /// Whether expert `i` was read in during the current step (a miss or a prefetch).
    fn missed_now(&self, i: usize) -> bool {
        self.fresh.get(i).copied().unwrap_or(false)
    }

    /// Drop the experts outside the resident set that lie within the fault-around window
    /// of expert `i`.
    fn sweep_around(&mut self, i: usize) -> Result<(), Error> {
        const WINDOW: usize = 64 << 10;
        let (off, len) = self.groups[i];
        let (lo, hi) = (off.saturating_sub(WINDOW), off + len + WINDOW);
        // groups do not overlap, so those ending after `lo` start at or after the first
        // one starting at `lo` minus one
        let first = self
            .by_offset
            .partition_point(|&j| self.groups[j].0 < lo)
            .saturating_sub(1);
        let mut k = first;
        while let Some(&j) = self.by_offset.get(k) {
            let (o, l) = self.groups[j];
            if o >= hi {
                break;
            }
            if j != i && self.last_use[j] == 0 && o + l > lo {
                self.drop_expert(j)?;
            }
            k += 1;
        }
        Ok(())
    }

    fn drop_expert(&mut self, i: usize) -> Result<(), Error> {
        let (off, len) = self.groups[i];
        self.model
            .advise_range(off, len, false)
            .map_err(Error::from)
    }

    /// Account for the experts `engine`'s last decode step chose, read in the runners-up
    /// the budget allows, and drop the least recently used experts beyond the budget.
    pub fn after_step(&mut self, engine: &MfEngine<'_>) -> Result<(), Error> {
        let s = engine.spec();
        self.clock += 1;
        let now = self.clock;
        for i in core::mem::take(&mut self.fresh_list) {
            self.fresh[i] = false;
        }
        // the chosen experts: resident from now on
        for slot in 0..self.slot_base.len() {
            let base = self.slot_base[slot];
            let k = if slot % 2 == 0 { s.att_k } else { s.ffn_k };
            let ranked = engine.ranked(slot);
            for &e in ranked.iter().take(k) {
                let i = base + e as usize;
                if self.last_use[i] == 0 {
                    self.stats.misses += 1;
                    self.mark_fresh(i);
                    self.resident += self.groups[i].1 as u64;
                } else {
                    self.stats.hits += 1;
                    if self.ahead[i] {
                        self.stats.prefetch_used += 1;
                    }
                }
                self.ahead[i] = false;
                self.touch(i, now);
            }
        }
        // the runners-up, while they fit without evicting anything used this step
        for slot in 0..self.slot_base.len() {
            let base = self.slot_base[slot];
            let k = if slot % 2 == 0 { s.att_k } else { s.ffn_k };
            for &e in engine.ranked(slot).iter().skip(k) {
                let i = base + e as usize;
                let len = self.groups[i].1 as u64;
                if self.last_use[i] != 0 || self.resident + len > self.budget {
                    continue;
                }
                let (off, l) = self.groups[i];
                self.model.advise_range(off, l, true).map_err(Error::from)?;
                self.stats.prefetched += 1;
                self.ahead[i] = true;
                self.mark_fresh(i);
                self.resident += len;
                // resident but not used: older than this step's choices (the clock starts
                // at 1, so this is never 0, "not resident")
                self.touch(i, now - 1);
            }
        }
        // the kernel maps neighbouring cached pages on a fault ("fault-around", up to
        // 64 KiB either side), so a miss can make parts of experts outside the set
        // resident: drop those again
        for n in 0..self.fresh_list.len() {
            let i = self.fresh_list[n];
            debug_assert!(self.missed_now(i));
            self.sweep_around(i)?;
        }
        // over budget: drop the least recently used (never this step's choices)
        while self.resident > self.budget {
            let Some(&(t, i)) = self.lru.first() else {
                break;
            };
            if t >= now {
                break;
            }
            self.drop_expert(i)?;
            self.resident -= self.groups[i].1 as u64;
            self.touch(i, 0);
            self.ahead[i] = false;
            self.stats.evicted += 1;
        }
        Ok(())
    }
}

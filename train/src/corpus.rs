//! A built-in English-like text for the one-command demo and the tests: short stories
//! drawn from a small probabilistic grammar (a fixed lexicon, subject–verb agreement,
//! articles, quoted speech, counting, paragraphs). No download, deterministic in the seed.
//!
//! Why a grammar and not an embedded book: the demo must run on a fresh machine with
//! nothing fetched, the binary should not carry megabytes of text, and a small model learns
//! this language within a couple of minutes on two cores — so differences between nested
//! sub-models show in the numbers and in the generated text (spelling, agreement, the
//! shape of a quotation) rather than all sizes being equally lost.

use modula_core::rng::SplitMix64;

const NAMES: &[&str] = &[
    "Anna", "Tom", "Mira", "Olaf", "Ines", "Kofi", "Lena", "Ravi",
];
const NOUNS: &[&str] = &[
    "fox", "boat", "miller", "river", "lamp", "goat", "baker", "bridge", "bell", "horse", "garden",
    "sailor", "kettle", "window", "wolf", "letter", "tower", "robin",
];
const ADJS: &[&str] = &[
    "old", "small", "green", "quiet", "bright", "heavy", "clever", "cold", "brave", "yellow",
    "tired", "gentle",
];
/// (third person singular present, past)
const VERBS: &[(&str, &str)] = &[
    ("sees", "saw"),
    ("finds", "found"),
    ("carries", "carried"),
    ("mends", "mended"),
    ("follows", "followed"),
    ("watches", "watched"),
    ("paints", "painted"),
    ("calls", "called"),
    ("keeps", "kept"),
    ("leaves", "left"),
];
const PLACES: &[&str] = &[
    "the mill",
    "the harbour",
    "the hill",
    "the market",
    "the forest",
    "the old road",
    "the village",
    "the shore",
];
const PREPS: &[&str] = &["near", "behind", "beyond", "below", "across"];
const TIMES: &[&str] = &[
    "In the morning",
    "At night",
    "One winter",
    "Later",
    "Before the rain",
    "At noon",
];
const COUNTS: &[&str] = &["two", "three", "four", "five", "six", "seven"];
const FEELINGS: &[&str] = &["happy", "afraid", "hungry", "sure", "glad", "curious"];

/// Plural of a lexicon noun.
fn plural(n: &str, out: &mut String) {
    out.push_str(n);
    out.push_str(if n.ends_with('x') { "es" } else { "s" });
}

fn pick<T: Copy>(r: &mut SplitMix64, xs: &[T]) -> T {
    xs[r.below(xs.len() as u64) as usize]
}

/// "the old fox", "a bell", "Anna".
fn noun_phrase(r: &mut SplitMix64, out: &mut String) {
    match r.below(5) {
        0 => out.push_str(pick(r, NAMES)),
        1 => {
            let n = pick(r, NOUNS);
            out.push_str(if n.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an "
            } else {
                "a "
            });
            out.push_str(n);
        }
        2 => {
            out.push_str("the ");
            out.push_str(pick(r, ADJS));
            out.push(' ');
            out.push_str(pick(r, NOUNS));
        }
        _ => {
            out.push_str("the ");
            out.push_str(pick(r, NOUNS));
        }
    }
}

fn capitalise_first(s: &mut String, from: usize) {
    if let Some(c) = s[from..].chars().next() {
        let up: String = c.to_uppercase().collect();
        s.replace_range(from..from + c.len_utf8(), &up);
    }
}

/// One sentence, ending with a full stop or a closing quotation mark and a space.
fn sentence(r: &mut SplitMix64, out: &mut String) {
    let start = out.len();
    match r.below(6) {
        // past narrative with a place
        0 | 1 => {
            if r.below(2) == 0 {
                out.push_str(pick(r, TIMES));
                out.push(' ');
                noun_phrase(r, out);
            } else {
                noun_phrase(r, out);
            }
            out.push(' ');
            out.push_str(pick(r, VERBS).1);
            out.push(' ');
            noun_phrase(r, out);
            out.push(' ');
            out.push_str(pick(r, PREPS));
            out.push(' ');
            out.push_str(pick(r, PLACES));
            out.push('.');
        }
        // present tense, agreement: singular "sees", plural "see"
        2 => {
            let plural = r.below(2) == 0;
            out.push_str("the ");
            let n = pick(r, NOUNS);
            if plural {
                self::plural(n, out);
            } else {
                out.push_str(n);
            }
            out.push(' ');
            let v = pick(r, VERBS).0;
            if plural {
                let stem = v.strip_suffix("ies").map(|s| format!("{s}y"));
                out.push_str(stem.as_deref().unwrap_or(&v[..v.len() - 1]));
            } else {
                out.push_str(v);
            }
            out.push(' ');
            noun_phrase(r, out);
            out.push('.');
        }
        // counting
        3 => {
            out.push_str(pick(r, NAMES));
            out.push_str(" had ");
            out.push_str(pick(r, COUNTS));
            out.push(' ');
            out.push_str(pick(r, ADJS));
            out.push(' ');
            plural(pick(r, NOUNS), out);
            out.push('.');
        }
        // description
        4 => {
            noun_phrase(r, out);
            out.push_str(" was ");
            out.push_str(pick(r, ADJS));
            out.push_str(" and ");
            out.push_str(pick(r, FEELINGS));
            out.push('.');
        }
        // quoted speech
        _ => {
            out.push('"');
            let q = out.len();
            noun_phrase(r, out);
            capitalise_first(out, q);
            out.push(' ');
            out.push_str(pick(r, VERBS).0);
            out.push(' ');
            noun_phrase(r, out);
            out.push_str(",\" said ");
            out.push_str(pick(r, NAMES));
            out.push('.');
        }
    }
    capitalise_first(out, start);
    out.push(' ');
}

/// About `bytes` bytes of the built-in text (paragraphs of 3–6 sentences, one per line),
/// the same for the same seed.
pub fn generated_text(bytes: usize, seed: u64) -> Vec<u8> {
    let mut r = SplitMix64(seed ^ 0x7465_7874_7461_6c65);
    let mut s = String::with_capacity(bytes + 256);
    while s.len() < bytes {
        for _ in 0..3 + r.below(4) {
            sentence(&mut r, &mut s);
        }
        s.pop();
        s.push('\n');
    }
    s.truncate(bytes);
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_deterministic_ascii_sentences_with_agreement() {
        let a = generated_text(20_000, 3);
        assert_eq!(a, generated_text(20_000, 3));
        assert_ne!(a, generated_text(20_000, 4));
        assert_eq!(a.len(), 20_000);
        let s = String::from_utf8(a).unwrap();
        assert!(s.is_ascii());
        assert!(s.lines().count() > 50);
        // plural subjects take the bare verb, singular ones the -s form
        assert!(s.contains("s carry ") || s.contains("s see ") || s.contains("s find "));
        assert!(!s.contains("s carrie ") && !s.contains("foxs") && s.contains("foxes"));
        assert!(s.contains("\" said "));
        // every line starts with a capital letter or a quotation mark
        for l in s.lines().take(200) {
            let c = l.chars().next().unwrap();
            assert!(c.is_ascii_uppercase() || c == '"', "{l}");
        }
    }
}

//! `modula inspect FILE`: architecture metadata and a tensor table; non-zero exit with the
//! reader's error on a bad file.

use modula_core::Model;
use std::fmt::Write as _;
use std::path::Path;

/// Largest power of two (up to 1 MiB) that divides `offset`.
fn alignment_of(offset: usize) -> usize {
    if offset == 0 {
        1 << 20
    } else {
        (1usize << offset.trailing_zeros()).min(1 << 20)
    }
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Render the report for `model` (separate from printing so tests can check it).
pub fn report<B: AsRef<[u8]>>(model: &Model<B>, all: bool) -> String {
    let mut s = String::new();
    let file_len = model.bytes().len();
    let _ = writeln!(
        s,
        "GGUF v{} · {} tensors · {} metadata entries · alignment {} · data at {} · {}",
        model.version(),
        model.tensor_count(),
        model.metadata_count(),
        model.alignment(),
        model.data_start(),
        human(file_len)
    );
    let _ = writeln!(s, "\nmetadata:");
    for (k, v) in model.metadata() {
        if all || k.starts_with("general.") || k.starts_with("modula.") {
            let known = if modula_core::gguf::schema::lookup(k).is_some() {
                ""
            } else {
                "  (unknown key)"
            };
            let _ = writeln!(s, "  {k:<40} {:<14} {v}{known}", v.type_description());
        }
    }
    // the architecture as the one loader reads it, and each tensor's role in it
    let desc = modula_core::ModelDesc::from_model(model);
    let roles: std::collections::BTreeMap<String, String> = match &desc {
        Ok(d) => {
            let _ = writeln!(
                s,
                "\narchitecture: {} · d {} · {} blocks · {:?} · {:?}",
                d.family.name(),
                d.d,
                d.blocks.len(),
                d.task,
                d.input
            );
            match d.check_tensors(model) {
                Ok(()) => {
                    let _ = writeln!(s, "  every described tensor is in the file, as described");
                }
                Err(e) => {
                    let _ = writeln!(s, "  tensors do not match the description: {e}");
                }
            }
            d.tensors()
                .into_iter()
                .map(|t| (t.name, format!("{:?}/{:?}", t.role, t.layout)))
                .collect()
        }
        Err(e) => {
            let _ = writeln!(s, "\narchitecture: no model description ({e})");
            Default::default()
        }
    };
    let groups: Vec<_> = model.page_groups().collect();
    if !groups.is_empty() {
        let _ = writeln!(s, "\npage groups (page size {}):", model.page_size());
        for g in &groups {
            let r = g.range();
            let _ = writeln!(
                s,
                "  {:<24} {:>10}..{:<10} {:>10}  {} tensors",
                g.name(),
                r.start,
                r.end,
                human(r.len()),
                g.tensor_indices().len()
            );
        }
    }
    let _ = writeln!(s, "\ntensors:");
    let _ = writeln!(
        s,
        "  {:<36} {:<5} {:<20} {:>12} {:>12} {:>7}  {:<22} group",
        "name", "type", "shape", "bytes", "offset", "align", "role/layout"
    );
    let mut group_of = vec!["-"; model.tensor_count()];
    for g in &groups {
        for &i in g.tensor_indices() {
            group_of[i] = g.name();
        }
    }
    let mut total = 0usize;
    for (i, t) in model.tensors().enumerate() {
        let group = group_of[i];
        total += t.bytes().len();
        let _ = writeln!(
            s,
            "  {:<36} {:<5} {:<20} {:>12} {:>12} {:>7}  {:<22} {}",
            t.name(),
            t.dtype().to_string(),
            format!("{:?}", t.shape()),
            t.bytes().len(),
            t.file_offset(),
            alignment_of(t.file_offset()),
            roles.get(t.name()).map_or("-", |r| r.as_str()),
            group
        );
    }
    let _ = writeln!(
        s,
        "\n  total tensor data: {} ({} bytes)",
        human(total),
        total
    );
    s
}

/// Open `path` and print its report.
pub fn run(path: &Path, all: bool) -> Result<(), String> {
    let model = Model::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    print!("{}", report(&model, all));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_largest_power_of_two() {
        assert_eq!(alignment_of(64), 64);
        assert_eq!(alignment_of(16384 * 3), 16384);
        assert_eq!(alignment_of(96), 32);
        assert_eq!(alignment_of(0), 1 << 20);
    }
}

//! `modula convert`: GGUF ⇄ safetensors.

use super::*;

/// Arguments of `modula convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input model (.gguf or .safetensors).
    #[arg(long = "in")]
    pub(crate) input: PathBuf,
    /// Output model (.gguf or .safetensors, by extension).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

/// Run `modula convert`.
pub fn convert(a: &ConvertArgs) -> Result<(), String> {
    // the output's extension decides the format: anything else is refused before the work
    let ext = a.out.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "gguf" && ext != "safetensors" {
        return Err(format!(
            "--out {}: the extension decides the format and must be .gguf or .safetensors",
            a.out.display()
        ));
    }
    crate::paths::refuse_overwrite(("--out", &a.out), &[("--in", &a.input)])?;
    let (model, ctx) = load_model(&a.input)?;
    if ext == "safetensors" {
        model.write_safetensors(&a.out, ctx)?;
    } else {
        model.write_gguf(&a.out, ctx, "modula dense model")?;
    }
    println!(
        "wrote {} ({} parameters)",
        a.out.display(),
        model.params.len()
    );
    Ok(())
}

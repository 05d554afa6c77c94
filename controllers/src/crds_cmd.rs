//! `beskar7 crds`: print or write the CustomResourceDefinitions generated from the API types.

use std::path::Path;

/// Writes every CRD to `dir/<group>_<plural>.yaml`, the layout `make crds` commits.
pub fn write_crds(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file_name, yaml) in beskar7_api::crds::rendered()? {
        std::fs::write(dir.join(file_name), yaml)?;
    }
    Ok(())
}

/// All CRDs as one multi-document YAML stream.
pub fn print_crds() -> anyhow::Result<String> {
    Ok(beskar7_api::crds::rendered_stream()?)
}

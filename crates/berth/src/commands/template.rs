//! `berth template ls|rm`: the VM templates containers are cloned from.

use std::path::PathBuf;

use berth_engine::template::TemplateManager;

#[derive(clap::Args)]
pub struct TemplateArgs {
    /// The daemon's exec root (templates live in its `templates/` directory).
    #[arg(long, default_value = "/run/berth", global = true)]
    pub exec_root: PathBuf,
    #[command(subcommand)]
    pub command: TemplateCommand,
}

#[derive(clap::Subcommand)]
pub enum TemplateCommand {
    /// List templates: key, shape, sizes, when made.
    Ls,
    /// Remove templates by key (or key prefix); the daemon rebuilds one when it is needed.
    Rm {
        /// Keys or key prefixes.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

pub fn run(args: TemplateArgs) -> anyhow::Result<()> {
    let manager = TemplateManager::new(args.exec_root.join("templates"), None);
    match args.command {
        TemplateCommand::Ls => {
            println!(
                "{:<18} {:>5} {:>8} {:>10} {:>10}  CREATED",
                "KEY", "VCPUS", "MEMORY", "STATE", "RAM FILE"
            );
            for template in manager.list() {
                let record = &template.record;
                let state = std::fs::metadata(template.state_file())
                    .map(|m| m.len())
                    .unwrap_or(0);
                let ram = template_disk_usage(&template.memory_file());
                println!(
                    "{:<18} {:>5} {:>6}Mi {:>8}Ki {:>8}Mi  {}",
                    record.key,
                    record.shape.vcpus,
                    record.shape.memory_mib,
                    state / 1024,
                    ram / (1024 * 1024),
                    record.created
                );
            }
        }
        TemplateCommand::Rm { keys } => {
            for key in keys {
                let removed = manager.remove(&key)?;
                if removed == 0 {
                    anyhow::bail!("no template with key {key}");
                }
                println!("removed {removed} template(s) matching {key}");
            }
        }
    }
    Ok(())
}

/// Bytes a (sparse) file really occupies.
fn template_disk_usage(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

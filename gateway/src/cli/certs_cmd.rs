//! `wanmig certs`: creates the deployment CA and site certificates;
//! `wanmig certs add-site` issues one more from the existing CA.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Subcommand};
use wanmig_gateway::certs;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: Option<CertsCommand>,
    /// Directory to write ca.pem, ca.key and <site>.pem/<site>.key into.
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// Comma-separated site names, e.g. site-a,site-b,site-c.
    #[arg(long, value_delimiter = ',', required = true)]
    pub sites: Vec<String>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Issue a certificate for one more site from the CA in --dir.
    AddSite {
        /// The new site's name.
        site: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Overwrite the site's files if they exist.
        #[arg(long)]
        force: bool,
    },
}

fn print_written(files: &[PathBuf], dir: &Path) {
    for f in files {
        println!("wrote {}", f.display());
    }
    println!(
        "keys are mode 0600; copy {}/ca.pem and each site's .pem/.key to that site only",
        dir.display()
    );
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        Some(CertsCommand::AddSite { site, dir, force }) => {
            let files = certs::add_site(&dir, &site, force)?;
            print_written(&files, &dir);
        }
        None => {
            if args.sites.is_empty() {
                bail!("--sites needs at least one site name");
            }
            let files = certs::create_deployment(&args.out, &args.sites, args.force)?;
            print_written(&files, &args.out);
        }
    }
    Ok(())
}

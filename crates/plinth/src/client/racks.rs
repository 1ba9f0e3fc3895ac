//! `plinth rack add|list|show|edit|delete`: racks, where enrolled machines sit.

use clap::Subcommand;
use plinth_client::query::MachineFilter;
use plinth_types::api::{Rack, RackCreate, RackPatch};

use super::Api;
use super::machines::{MACHINE_HEADERS, machine_rows};
use super::output::{Output, dash, table};

#[derive(Subcommand)]
pub enum RackCommand {
    Add {
        name: String,
        #[arg(long)]
        height_u: i32,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        room: Option<String>,
        #[arg(long)]
        row: Option<String>,
    },
    List,
    Show {
        name: String,
    },
    /// Change a rack's site, room, row, height or boot method.
    Edit {
        name: String,
        #[arg(long)]
        height_u: Option<i32>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        room: Option<String>,
        #[arg(long)]
        row: Option<String>,
        /// How the rack's machines boot the ramdisk: network or virtual_media.
        #[arg(long)]
        boot_method: Option<plinth_types::api::BootMethod>,
    },
    Delete {
        name: String,
    },
}

pub async fn run(api: &Api, cmd: RackCommand) -> anyhow::Result<()> {
    let rack_rows = |rs: &[Rack]| -> Vec<Vec<String>> {
        rs.iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    dash(r.site.as_ref()),
                    dash(r.room.as_ref()),
                    dash(r.row.as_ref()),
                    format!("{}/{}U", r.used_u, r.height_u),
                    r.machine_count.to_string(),
                ]
            })
            .collect()
    };
    const H: &[&str] = &["NAME", "SITE", "ROOM", "ROW", "USED", "MACHINES"];
    match cmd {
        RackCommand::Add {
            name,
            height_u,
            site,
            room,
            row,
        } => {
            let r = api
                .client
                .create_rack(&RackCreate {
                    name,
                    site,
                    room,
                    row,
                    height_u,
                })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&r);
            }
            table(H, rack_rows(&[r]));
        }
        RackCommand::List => {
            let rs = api.client.list_racks().await?;
            if api.output == Output::Json {
                return api.print_json(&rs);
            }
            table(H, rack_rows(&rs));
        }
        RackCommand::Show { name } => {
            let r = api.client.get_rack(&name).await?;
            let ms = api
                .client
                .list_machines(&MachineFilter {
                    rack: Some(name),
                    limit: Some(1000),
                    ..Default::default()
                })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&serde_json::json!({ "rack": r, "machines": ms.machines }));
            }
            table(H, rack_rows(&[r]));
            println!();
            table(MACHINE_HEADERS, machine_rows(&ms.machines));
        }
        RackCommand::Edit {
            name,
            height_u,
            site,
            room,
            row,
            boot_method,
        } => {
            let patch = RackPatch {
                site: site.map(Some),
                room: room.map(Some),
                row: row.map(Some),
                height_u,
                boot_method,
            };
            let r = api.client.update_rack(&name, &patch).await?;
            if api.output == Output::Json {
                return api.print_json(&r);
            }
            table(H, rack_rows(&[r]));
        }
        RackCommand::Delete { name } => {
            api.client.delete_rack(&name).await?;
            eprintln!("rack {name} deleted");
        }
    }
    Ok(())
}

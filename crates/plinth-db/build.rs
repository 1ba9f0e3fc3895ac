//! `sqlx::migrate!` embeds the migrations at compile time; rebuild when they change. (The
//! files of `sql/` are `include_str!`ed, which cargo tracks by itself.)
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}

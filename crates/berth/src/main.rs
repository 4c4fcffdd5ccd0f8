fn main() {
    let img = berth_guest::prepare(std::path::Path::new("/var/cache/berth"), &|s| {
        eprintln!("{s}")
    })
    .unwrap();
    println!("{img:?}");
}

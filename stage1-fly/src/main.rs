fn main() {
    eprintln!("stage1-fly: not built yet");
    std::process::exit(1);
}

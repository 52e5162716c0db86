fn main() {
    eprintln!("stage1-ns: not built yet");
    std::process::exit(1);
}

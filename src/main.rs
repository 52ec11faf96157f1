fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == rbuild::sandbox::HELPER_ARG)
    {
        rbuild::sandbox::helper_main::<rbuild::fileop::FileJob>();
    }
    let code = rbuild::cli::main();
    rbuild::sandbox::shutdown();
    std::process::exit(code);
}

fn main() {
    // Before anything else, while the process has one thread (unshare needs that).
    rbuild::sandbox::userns::enter_if_child();
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

fn main() {
    // A Windows binary built with MinGW (the prebuilt win32-x64 package, cross-built with zig) loads
    // Node-API from the host process at run time (napi's `dyn-symbols`), as an MSVC build does, so
    // it runs in the official Node and Electron and needs no libnode.dll to link against, which
    // napi-build's MinGW set-up looks for.
    let target = |k: &str| std::env::var(k).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "windows" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        return;
    }
    napi_build::setup();
}

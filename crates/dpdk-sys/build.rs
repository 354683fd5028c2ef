//! Generates bindings to the system DPDK with bindgen and compiles the C shim.
//!
//! DPDK's fast-path functions (`rte_eth_rx_burst`, `rte_pktmbuf_alloc`, ...) are `static inline`
//! in its headers, so they have no symbol to link against. bindgen's `wrap_static_fns` emits a C
//! file with one exported wrapper per such function; we compile it with the same flags DPDK's
//! pkg-config file gives, together with `shim.c`.

use std::env;
use std::path::PathBuf;

const MIN_DPDK: &str = "22.11";

fn fail(msg: &str) -> ! {
    eprintln!("\n\nerror: {msg}\n");
    std::process::exit(1);
}

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let dpdk = match pkg_config::Config::new()
        .atleast_version(MIN_DPDK)
        .cargo_metadata(true)
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => fail(&format!(
            "DPDK >= {MIN_DPDK} was not found through pkg-config ({e}).\n\
             Install it with:  apt-get install dpdk dpdk-dev libdpdk-dev pkg-config\n\
             (Debian 12 ships DPDK 22.11 LTS; for a DPDK installed elsewhere set PKG_CONFIG_PATH \
             to the directory holding libdpdk.pc)"
        )),
    };

    // pkg-config's cflags: include paths, `-include rte_config.h`, `-march=...`.
    let cflags: Vec<String> = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets this"));
    let header = manifest.join("wrapper.h");
    let wrappers = out.join("static_fns");

    let mut builder = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .clang_args(&cflags)
        .clang_arg(format!("-I{}", manifest.display()))
        .allowlist_function("rte_.*|tsmp_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*|RING_F_.*|MEMPOOL_F_.*|SOCKET_ID_ANY")
        // Packed unions bindgen cannot lay out; nothing here uses their fields.
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_arp_ipv4")
        .opaque_type("rte_gtp_psc_generic_hdr")
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrappers)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for p in &dpdk.include_paths {
        builder = builder.clang_arg(format!("-I{}", p.display()));
    }

    let generated =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate())) {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => fail(&format!(
                "bindgen could not read the DPDK headers: {e}.\n\
             Check that libdpdk-dev matches the installed DPDK (apt-get install libdpdk-dev)."
            )),
            Err(_) => fail(
                "bindgen could not load libclang.\n\
             Install it with:  apt-get install clang libclang-dev\n\
             (or point LIBCLANG_PATH at the directory holding libclang.so)",
            ),
        };
    generated
        .write_to_file(out.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("cannot write bindings to {}: {e}", out.display())));

    let mut cc = cc::Build::new();
    cc.file(wrappers.with_extension("c"))
        .file(manifest.join("shim.c"))
        .include(&manifest)
        .opt_level(3)
        .warnings(false);
    for f in &cflags {
        cc.flag(f);
    }
    cc.compile("tsmp_dpdk_shim");
}

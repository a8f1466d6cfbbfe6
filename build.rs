//! Generates the RQD protobuf messages and grpcio client/server code from `protos/` without a
//! `protoc` binary: protobuf-parse (pure Rust, keeps services) produces descriptors, which are
//! re-decoded as rust-protobuf 2 descriptors for protobuf-codegen and grpcio-compiler.
use protobuf3::Message as _;
use std::{
    env, fs,
    path::{Path, PathBuf},
};

fn main() {
    // Version string for `--version`: the git revision, when built from a checkout.
    let git_hash = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CUE_SCHEDULER_GIT_HASH={git_hash}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    let proto_dir = Path::new("protos");
    println!("cargo:rerun-if-changed=protos");
    let mut inputs: Vec<PathBuf> = fs::read_dir(proto_dir)
        .expect("read protos/")
        .map(|e| e.expect("protos/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    inputs.sort();

    let parsed = protobuf_parse::Parser::new()
        .pure()
        .include(proto_dir)
        .inputs(&inputs)
        .parse_and_typecheck()
        .expect("parse .proto files");
    let descriptors: Vec<protobuf::descriptor::FileDescriptorProto> = parsed
        .file_descriptors
        .iter()
        .map(|fd| {
            let bytes = fd.write_to_bytes().expect("encode descriptor");
            <protobuf::descriptor::FileDescriptorProto as protobuf::Message>::parse_from_bytes(&bytes)
                .expect("decode descriptor as protobuf 2")
        })
        .collect();
    let to_generate: Vec<String> = parsed.relative_paths.iter().map(|p| p.to_string()).collect();

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("protos");
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir).expect("create OUT_DIR/protos");
    protobuf_codegen::gen_and_write(
        &descriptors,
        &to_generate,
        &out_dir,
        &protobuf_codegen::Customize::default(),
    )
    .expect("generate protobuf messages");
    let services = grpcio_compiler::codegen::gen(&descriptors, &to_generate);
    assert!(!services.is_empty(), "no gRPC services found in protos/");
    for file in services {
        fs::write(out_dir.join(&file.name), &file.content).expect("write service code");
    }

    // Generated files carry inner attributes, so they are declared as modules, not include!d.
    let mut mods: Vec<String> = fs::read_dir(&out_dir)
        .expect("read OUT_DIR/protos")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".rs")?.to_string();
            (stem != "mod").then(|| format!("pub mod {stem};\n"))
        })
        .collect();
    mods.sort();
    fs::write(out_dir.join("mod.rs"), mods.concat()).expect("write mod.rs");
}

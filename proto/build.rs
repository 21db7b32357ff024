//! Compiles proto/e2ee/ca/v1 with protox (pure Rust, no system protoc) and generates tonic code with our codec.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "e2ee/ca/v1/common.proto",
        "e2ee/ca/v1/admin.proto",
        "e2ee/ca/v1/identity.proto",
        "e2ee/ca/v1/key_backup.proto",
        "e2ee/ca/v1/transparency.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptor_set = protox::compile(files, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The encoded descriptor set also feeds server reflection.
    std::fs::write(
        out_dir.join("e2ee_ca_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptor_set),
    )?;
    // Every service and client decodes with `codec::ProtoCodec`: bytes that are not the expected
    // message are INVALID_ARGUMENT (tonic's prost codec answers INTERNAL).
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(descriptor_set)?;
    Ok(())
}

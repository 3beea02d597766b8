//! Prints the sizes of the futures that idle connections cost (`cargo bench --bench layout`).
//! They were once asserted by unit tests; a future's layout moves with the compiler, so they
//! are measured here and read by a person, and a compiler upgrade cannot fail the test suite.
//! The figures beside each size are what they were when they were last looked into.

use portcullis::proxy::layout;

fn main() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let task = layout::client_connection_task().await?;
        println!(
            "client connection task: {task} bytes (under 2048 since rare paths keep their bulk \
             on the heap; a 4 KiB drain buffer once made it 5.8 KiB)"
        );
        let tls = layout::tls_client_connection_task().await?;
        println!("TLS client connection task, handshake done: {tls} bytes (under 2048)");
        let relay = layout::idle_relay().await?;
        println!(
            "idle tunnel relay: {relay} bytes (~2.2 KiB with each direction built inside the \
             join; 3.7 KiB when both were held twice)"
        );
        Ok(())
    })
}

//! `leash token inspect`: prints a token's blocks and checks its signature against the
//! data folder's root keys.

use std::process::ExitCode;

use crate::datadir;

/// Prints `token`'s blocks; checks the signature when `data` holds root keys.
pub fn inspect(token: &str, data: &std::path::Path) -> anyhow::Result<ExitCode> {
    let unverified = biscuit_auth::UnverifiedBiscuit::from_base64(token)
        .map_err(|_| anyhow::anyhow!("not a valid Biscuit token"))?;
    println!("root key id: {:?}", unverified.root_key_id());
    for (index, id) in unverified.revocation_identifiers().iter().enumerate() {
        let source = unverified.print_block_source(index).unwrap_or_default();
        println!("block {index} (revocation id {}):", hex::encode(id));
        for line in source.lines() {
            println!("    {line}");
        }
    }
    if data.join(datadir::ROOT_KEYS_FILE).exists() {
        let keys = datadir::load_or_create_keys(data)?;
        match unverified.verify(|kid: Option<u32>| keys.public_for(kid)) {
            Ok(_) => println!("signature: valid (root keys of {})", data.display()),
            Err(err) => {
                println!("signature: INVALID ({err})");
                return Ok(ExitCode::FAILURE);
            }
        }
    } else {
        println!(
            "signature: not checked (no root keys in {})",
            data.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

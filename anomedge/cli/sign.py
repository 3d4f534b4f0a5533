"""ad-sign: sign an artifact folder with an ed25519 key, make a key pair, or check a signature.

    ad-sign --keygen KEYFILE                     # KEYFILE (private, 0600) + KEYFILE.pub
    ad-sign ARTIFACT --key KEYFILE               # writes ARTIFACT/signature.json
    ad-sign ARTIFACT --check [--trust KEY.pub]   # verify as ad-run --require-signature would

Needs the ``sign`` extra (``pip install 'anomedge[sign]'``). What a signature covers: docs/artifact.md.
"""

from __future__ import annotations

import click

from .common import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", required=False, type=click.Path(file_okay=False))
@click.option("--key", type=click.Path(dir_okay=False), default=None, help="Private key (PEM) to sign ARTIFACT with.")
@click.option("--keygen", type=click.Path(dir_okay=False), default=None,
              help="Write a new key pair: this file (private) and this file + .pub (public).")
@click.option("--check", is_flag=True, help="Verify ARTIFACT's signature (with --trust: by one of these keys).")
@click.option("--trust", multiple=True, type=click.Path(dir_okay=False), help="Trusted public key (repeatable).")
@one_line_errors
def main(artifact, key, keygen, check, trust):
    """Sign ARTIFACT (--key), create a key pair (--keygen) or verify a signature (--check)."""
    from ..artifact import Artifact
    from ..artifact.signing import keygen as make_keys
    from ..artifact.signing import sign
    from ..errors import InputError

    if sum(bool(x) for x in (key, keygen, check)) != 1:
        raise InputError("give exactly one of --keygen FILE, ARTIFACT --key FILE, ARTIFACT --check")
    if keygen:
        if artifact:
            raise InputError("--keygen takes no ARTIFACT")
        private, public = make_keys(keygen)
        click.echo(f"wrote {private} (private: keep it off the line) and {public} (give it to ad-run --trust)")
        return
    if not artifact:
        raise InputError("give the ARTIFACT folder")
    if key:
        path = sign(artifact, key)
        click.echo(f"signed {artifact}: {path} (artifact sha256 {Artifact.load(artifact).sha256[:16]}…)")
        return
    loaded = Artifact.load(artifact, trust=trust, require_signature=True)
    click.echo(f"{artifact}: signature valid, key {loaded.signed_by}, artifact sha256 {loaded.sha256[:16]}…")


if __name__ == "__main__":
    main()

"""How the agents do TLS with https targets (`defaults.tls`).

By default they verify the server's certificate against the system's CAs, as a
browser would. A staging host often has a certificate no system trusts:
`tls: {ca: FILE}` adds the CAs of a PEM file to the system's (so a redirect to a
public host still verifies), and `tls: {verify: false}` accepts any certificate
(k6's `insecureSkipTLSVerify`, requests' `verify=False`): the traffic is still
encrypted, but nothing proves who answers. A server that asks for a client
certificate (mutual TLS) gets `tls: {cert: FILE, key: FILE}` (the key may be in
the certificate's file).

The files are read on the coordinator's machine, where the scenario is, and their
contents travel in each agent's plan (`Plan.files`, over the authenticated link;
a coordinator does not ship a private key over a link without keys), so agents
on other machines need no copy. Both sides build the context with
`client_context`: the coordinator to reject a file that holds no certificate (or
a key that is not the certificate's) before any agent starts, the agents to use
it. Python's ssl module loads a certificate chain only from files, so the agent
writes the certificate and key to a private temporary folder for the moment it
loads them, and removes them at once.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from typing import Final

CA_FILE_KEY: Final = "tls/ca.pem"
CERT_FILE_KEY: Final = "tls/cert.pem"
KEY_FILE_KEY: Final = "tls/key.pem"


def client_context(
    verify: bool,
    ca_pem: bytes | None,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
) -> ssl.SSLContext | None:
    """The context for https targets; None when the engines' default (the system's
    CAs, verified, no client certificate) is what the scenario asks. Raises
    ssl.SSLError for PEM text without a certificate or with a key that is not the
    certificate's, ValueError for bytes that are not text or an encrypted key."""
    if verify and ca_pem is None and cert_pem is None:
        return None
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_pem is not None:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    if cert_pem is not None:
        _load_client_certificate(context, cert_pem, key_pem)
    return context


def _load_client_certificate(
    context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes | None
) -> None:
    with tempfile.TemporaryDirectory(prefix="loadctl-tls-") as folder:  # mode 0700
        cert = os.path.join(folder, "cert.pem")
        key = os.path.join(folder, "key.pem") if key_pem is not None else None
        for path, data in ((cert, cert_pem), (key, key_pem)):
            if path is not None and data is not None:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
        context.load_cert_chain(cert, key, password=_encrypted)


def _encrypted() -> bytes:
    # Called by OpenSSL only for an encrypted key; without it, OpenSSL would ask for the
    # password on the terminal and an unattended coordinator or agent would wait forever.
    raise ValueError("the private key is encrypted")

"""How the agents check the certificates of https targets (`defaults.tls`).

By default they verify them against the system's CAs, as a browser would. A
staging host often has a certificate no system trusts: `tls: {ca: FILE}` adds the
CAs of a PEM file to the system's (so a redirect to a public host still
verifies), and `tls: {verify: false}` accepts any certificate (k6's
`insecureSkipTLSVerify`, requests' `verify=False`): the traffic is still
encrypted, but nothing proves who answers.

The file is read on the coordinator's machine, where the scenario is, and its
contents travel in each agent's plan (`Plan.files[CA_FILE_KEY]`, over the
authenticated link), so agents on other machines need no copy of it. Both sides
build the context with `client_context`: the coordinator to reject a file that
holds no certificate before any agent starts, the agents to use it.
"""

from __future__ import annotations

import ssl
from typing import Final

CA_FILE_KEY: Final = "tls/ca.pem"


def client_context(verify: bool, ca_pem: bytes | None) -> ssl.SSLContext | None:
    """The context for https targets; None when the engines' default (the system's
    CAs, verified) is what the scenario asks. Raises ssl.SSLError for a PEM text
    without a certificate, ValueError for bytes that are not text."""
    if verify and ca_pem is None:
        return None
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_pem is not None:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return context

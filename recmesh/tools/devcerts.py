"""`make certs` / `python -m recmesh.tools.devcerts [DIR]` (default: $RECMESH_VAR/certs): a
development certificate authority and one certificate for the services (server and client use:
mTLS between services) valid for localhost, 127.0.0.1 and the Kubernetes Service names - with
openssl. Never for production: there, certificates come from the cluster's issuer (cert-manager, a mesh)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from recmesh.common.paths import var_paths

NAMES = ["localhost", "gateway", "encoder", "retrieval", "ranker", "updater", "*.svc", "*.svc.cluster.local"]


def make(folder: Path, days: int = 365) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("ca.pem", "ca.key", "service.pem", "service.key")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days), "-subj", "/CN=recmesh dev CA",
            "-keyout", str(paths["ca.key"]), "-out", str(paths["ca.pem"]))
    sans = ",".join([*(f"DNS:{n}" for n in NAMES), "IP:127.0.0.1"])
    csr = folder / "service.csr"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=recmesh", "-keyout", str(paths["service.key"]),
            "-out", str(csr))
    ext = folder / "service.ext"
    ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(paths["ca.pem"]), "-CAkey", str(paths["ca.key"]),
            "-CAcreateserial", "-days", str(days), "-extfile", str(ext), "-out", str(paths["service.pem"]))
    csr.unlink()
    ext.unlink()
    for key in ("ca.key", "service.key"):
        paths[key].chmod(0o600)
    return paths


if __name__ == "__main__":
    out = make(Path(sys.argv[1]) if len(sys.argv) > 1 else var_paths().certs)
    print("\n".join(str(p) for p in out.values()))

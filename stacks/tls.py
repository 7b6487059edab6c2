"""Mutual TLS for one cluster: its own CA, and certificates for scheduler, workers and client.

Node keys (and, for uniformity, certificates) travel through SSM SecureString parameters that
only their own node role can read (a worker never reads the scheduler's key), never through
user-data (readable with ec2:DescribeInstanceAttribute, capped at 16 KB). The client's key
leaves only as a sensitive output. Every key is in the Terraform state: keep the state private
(the cdktf wrapper writes it so; it is git-ignored here) or move it to an encrypted backend.
"""

from __future__ import annotations

from cdktf_cdktf_provider_aws.ssm_parameter import SsmParameter
from cdktf_cdktf_provider_tls.cert_request import CertRequest, CertRequestSubject
from cdktf_cdktf_provider_tls.locally_signed_cert import LocallySignedCert
from cdktf_cdktf_provider_tls.private_key import PrivateKey
from cdktf_cdktf_provider_tls.self_signed_cert import SelfSignedCert, SelfSignedCertSubject
from constructs import Construct

from stacks.access import node_secret
from stacks.config import NODE_ROLES, ClusterSettings

# Certificates outlive any sensible cluster; the CA is per cluster and per deployment, and
# `cdktf destroy` throws it away with everything it signed.
VALIDITY_HOURS = 24 * 90
# What each certificate may do. Nodes are both TLS servers and clients (the scheduler calls
# workers, workers call the scheduler and each other); the client only ever connects, to the
# scheduler and to the dashboard gateway, so its certificate cannot serve.
USES = {
    "scheduler": ["digital_signature", "server_auth", "client_auth"],
    "worker": ["digital_signature", "server_auth", "client_auth"],
    "client": ["digital_signature", "client_auth"],
}


class ClusterTls(Construct):
    """The CA, a certificate per role, and each node role's SSM parameters under its own path."""

    def __init__(self, scope: Construct, id: str, *, settings: ClusterSettings) -> None:
        super().__init__(scope, id)
        ca_key = PrivateKey(self, "ca-key", algorithm="ECDSA", ecdsa_curve="P256")
        self.ca = SelfSignedCert(
            self,
            "ca",
            private_key_pem=ca_key.private_key_pem,
            subject=[SelfSignedCertSubject(common_name=f"{settings.resource_prefix} CA", organization="Dask cluster")],
            is_ca_certificate=True,
            validity_period_hours=VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing"],
        )
        self.client_key, self.client_cert = self._signed(settings, "client", ca_key)
        self.parameters: list[SsmParameter] = []
        for role in NODE_ROLES:
            key, cert = self._signed(settings, role, ca_key)
            self.parameters += [
                node_secret(self, f"{role}-ca-param", settings=settings, role=role, name="ca.pem",
                            description="Cluster CA certificate", value=self.ca.cert_pem),
                node_secret(self, f"{role}-cert-param", settings=settings, role=role, name=f"{role}.pem",
                            description=f"Dask {role} certificate", value=cert.cert_pem),
                node_secret(self, f"{role}-key-param", settings=settings, role=role, name=f"{role}.key",
                            description=f"Dask {role} private key", value=key.private_key_pem),
            ]  # fmt: skip

    def _signed(self, settings: ClusterSettings, role: str, ca_key: PrivateKey) -> tuple[PrivateKey, LocallySignedCert]:
        key = PrivateKey(self, f"{role}-key", algorithm="ECDSA", ecdsa_curve="P256")
        request = CertRequest(
            self,
            f"{role}-csr",
            private_key_pem=key.private_key_pem,
            # The role, which the scheduler and the gateway check (image/dask_node/trust.py).
            subject=[
                CertRequestSubject(
                    common_name=f"{settings.resource_prefix}-{role}",
                    organization="Dask cluster",
                    organizational_unit=role,
                )
            ],
        )
        cert = LocallySignedCert(
            self,
            f"{role}-cert",
            cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=ca_key.private_key_pem,
            ca_cert_pem=self.ca.cert_pem,
            validity_period_hours=VALIDITY_HOURS,
            allowed_uses=USES[role],
        )
        return key, cert

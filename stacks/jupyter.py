"""JupyterLab on the scheduler node: its token, made by Terraform and kept in SSM."""

from __future__ import annotations

from cdktf_cdktf_provider_random.password import Password
from cdktf_cdktf_provider_random.provider import RandomProvider
from constructs import Construct

from stacks.access import node_secret
from stacks.config import ClusterSettings
from stacks.userdata import JUPYTER_TOKEN_PARAMETER


class JupyterToken(Construct):
    """A random token; the scheduler node reads it from SSM, the user from a sensitive output."""

    def __init__(self, scope: Construct, id: str, *, settings: ClusterSettings) -> None:
        super().__init__(scope, id)
        RandomProvider(self, "random")
        self.password = Password(self, "token", length=48, special=False)
        self.parameter = node_secret(
            self,
            "token-param",
            settings=settings,
            role="scheduler",
            name=JUPYTER_TOKEN_PARAMETER,
            description="JupyterLab token",
            value=self.password.result,
        )

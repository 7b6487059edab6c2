"""The computation image: an ECR repository, and the image built and pushed by `cdktf deploy`."""

from __future__ import annotations

import json

from cdktf import Fn
from cdktf_cdktf_provider_aws.data_aws_ecr_authorization_token import DataAwsEcrAuthorizationToken
from cdktf_cdktf_provider_aws.ecr_lifecycle_policy import EcrLifecyclePolicy
from cdktf_cdktf_provider_aws.ecr_repository import (
    EcrRepository,
    EcrRepositoryEncryptionConfiguration,
    EcrRepositoryImageScanningConfiguration,
)
from cdktf_cdktf_provider_docker.image import Image, ImageBuild
from cdktf_cdktf_provider_docker.provider import DockerProvider, DockerProviderRegistryAuth
from cdktf_cdktf_provider_docker.registry_image import RegistryImage
from constructs import Construct

from stacks.config import ClusterSettings
from stacks.content import image_content_hash

# Terraform runs in cdktf.out/stacks/<stack>/; the build context is the project root.
CONTEXT_FROM_STACK_DIR = "../../.."
KEEP_IMAGES = 5


class ComputationImage(Construct):
    """ECR repository plus the image every node runs, tagged with its content hash."""

    def __init__(self, scope: Construct, id: str, *, settings: ClusterSettings) -> None:
        super().__init__(scope, id)
        self.repository = EcrRepository(
            self,
            "repository",
            name=settings.resource_prefix,
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration=EcrRepositoryImageScanningConfiguration(scan_on_push=True),
            encryption_configuration=[EcrRepositoryEncryptionConfiguration(encryption_type="KMS")],
            # `cdktf destroy` must leave nothing billable behind, images included.
            force_delete=True,
        )
        EcrLifecyclePolicy(
            self,
            "keep-recent",
            repository=self.repository.name,
            policy=json.dumps(
                {
                    "rules": [
                        {
                            "rulePriority": 1,
                            "description": f"Keep the last {KEEP_IMAGES} images",
                            "selection": {
                                "tagStatus": "any",
                                "countType": "imageCountMoreThan",
                                "countNumber": KEEP_IMAGES,
                            },
                            "action": {"type": "expire"},
                        }
                    ]
                }
            ),
        )
        token = DataAwsEcrAuthorizationToken(self, "push-token", registry_id=self.repository.registry_id)
        docker = DockerProvider(
            self,
            "docker",
            registry_auth=[
                DockerProviderRegistryAuth(
                    address=token.proxy_endpoint, username=token.user_name, password=token.password
                )
            ],
        )
        # Clusters with JupyterLab get a larger image of their own: "<content hash>-lab".
        self.tag = image_content_hash() + ("-lab" if settings.jupyter else "")
        # A function rather than an f-string: the URI is passed into templatefile, where cdktf
        # cannot resolve a token embedded in a literal string.
        self.uri = Fn.join(":", [self.repository.repository_url, self.tag])
        build = Image(
            self,
            "build",
            provider=docker,
            name=self.uri,
            build_attribute=ImageBuild(
                context=CONTEXT_FROM_STACK_DIR,
                dockerfile="image/Dockerfile",
                platform="linux/amd64",
                build_args={"JUPYTER": "1" if settings.jupyter else "0"},
            ),
            platform="linux/amd64",
            triggers={"content": self.tag},
            keep_locally=False,
        )
        self.pushed = RegistryImage(
            self,
            "push",
            provider=docker,
            name=build.name,
            triggers={"content": self.tag},
            # Old images stay for running nodes; the lifecycle policy and force_delete clear them.
            keep_remotely=True,
        )

"""Where the nodes live and who may reach them: subnets and the cluster security group."""

from __future__ import annotations

import ipaddress

from cdktf import Fn
from cdktf_cdktf_provider_aws.data_aws_subnet import DataAwsSubnet
from cdktf_cdktf_provider_aws.data_aws_subnets import DataAwsSubnets, DataAwsSubnetsFilter
from cdktf_cdktf_provider_aws.data_aws_vpc import DataAwsVpc
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.vpc_security_group_egress_rule import VpcSecurityGroupEgressRule
from cdktf_cdktf_provider_aws.vpc_security_group_ingress_rule import VpcSecurityGroupIngressRule
from constructs import Construct

from stacks.config import DASHBOARD_PORT, JUPYTER_PORT, SCHEDULER_PORT, ClusterSettings


class ClusterNetwork(Construct):
    """Subnets (the default VPC's unless given) and one security group for every node.

    Clients reach the scheduler, the dashboard (and Jupyter when enabled) from the allowed
    networks only. Nodes reach each other on any port: workers exchange data directly and
    nannies pick random ports. There is no SSH rule: shell access goes through SSM.
    """

    def __init__(self, scope: Construct, id: str, *, settings: ClusterSettings) -> None:
        super().__init__(scope, id)
        if settings.subnet_ids:
            first = DataAwsSubnet(self, "first-subnet", id=settings.subnet_ids[0])
            vpc_id = first.vpc_id
            self.subnet_ids: list[str] = list(settings.subnet_ids)
        else:
            vpc = DataAwsVpc(self, "default-vpc", default=True)
            vpc_id = vpc.id
            subnets = DataAwsSubnets(
                self,
                "default-subnets",
                filter=[
                    DataAwsSubnetsFilter(name="vpc-id", values=[vpc.id]),
                    DataAwsSubnetsFilter(name="default-for-az", values=["true"]),
                ],
            )
            self.subnet_ids = subnets.ids
        # The scheduler is a single instance: it takes the first subnet; workers spread over all.
        self.scheduler_subnet_id = Fn.element(self.subnet_ids, 0)

        self.security_group = SecurityGroup(
            self,
            "nodes",
            name=f"{settings.resource_prefix}-nodes",
            description=f"Dask cluster {settings.name}: scheduler and workers",
            vpc_id=vpc_id,
        )
        sg_id = self.security_group.id

        ports = [(SCHEDULER_PORT, "Dask scheduler (mutual TLS)"), (DASHBOARD_PORT, "Dask dashboard")]
        if settings.jupyter:
            ports.append((JUPYTER_PORT, "JupyterLab (token)"))
        for port, what in ports:
            for index, cidr in enumerate(settings.allowed_cidrs):
                family = {"cidr_ipv4": cidr} if ipaddress.ip_network(cidr).version == 4 else {"cidr_ipv6": cidr}
                VpcSecurityGroupIngressRule(
                    self,
                    f"client-{port}-{index}",
                    security_group_id=sg_id,
                    description=f"{what} from allowed network",
                    ip_protocol="tcp",
                    from_port=port,
                    to_port=port,
                    **family,
                )
        VpcSecurityGroupIngressRule(
            self,
            "between-nodes",
            security_group_id=sg_id,
            description="Any traffic between cluster nodes (worker to worker, nannies)",
            ip_protocol="-1",
            referenced_security_group_id=sg_id,
        )
        # Egress to the internet reaches ECR, SSM and the OS package mirror; a NAT gateway or
        # VPC endpoints would cost more per month than most clusters cost to run.
        VpcSecurityGroupEgressRule(
            self,
            "egress",
            security_group_id=sg_id,
            description="ECR, SSM and package mirrors over HTTPS",
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            cidr_ipv4="0.0.0.0/0",
        )
        VpcSecurityGroupEgressRule(
            self,
            "egress-between-nodes",
            security_group_id=sg_id,
            description="Any traffic between cluster nodes",
            ip_protocol="-1",
            referenced_security_group_id=sg_id,
        )

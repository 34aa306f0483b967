"""The stack's cost and monitoring pieces: cost tags, the optional budget, the job-state
events, their metrics, the blocked-queue alarm and the dashboard (infra/cryosnake.yaml).

Checked on the template's structure (with a small evaluator of CloudWatch Logs filter
patterns), and on moto: Batch job-state events sent through EventBridge reach the log
group, and the filters count them.
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

import boto3
import pytest
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER
from test_infra import (
    MONITORING_OUTPUTS,
    MOTO_SKIPS_BUCKET_POLICY,
    STACK,
    create_stack,
    resources,
    template,
)

from cryosnake.aws import stack as aws_stack

__all__ = ["template"]  # the module fixture of test_infra, used here too


# ------------------------------------------------------------------ cost tags
COST_TAG = "cryosnake:stack"
COMPONENT_TAG = "cryosnake:component"
COMPONENTS = {
    "network",
    "storage",
    "images",
    "iam",
    "batch",
    "batch-cpu",
    "batch-gpu",
    "batch-volume",
    "logs",
    "monitoring",
}
# The resource types of the template that carry tags, and where: a list of {Key, Value}
# under the property, a map under it, or (launch template) TagSpecifications of type
# launch-template.
TAGGABLE = {
    "AWS::EC2::VPC": "Tags",
    "AWS::EC2::InternetGateway": "Tags",
    "AWS::EC2::Subnet": "Tags",
    "AWS::EC2::RouteTable": "Tags",
    "AWS::EC2::VPCEndpoint": "Tags",
    "AWS::EC2::SecurityGroup": "Tags",
    "AWS::EC2::LaunchTemplate": "TagSpecifications",
    "AWS::S3::Bucket": "Tags",
    "AWS::ECR::Repository": "Tags",
    "AWS::IAM::Role": "Tags",
    "AWS::Batch::ComputeEnvironment": "Tags",
    "AWS::Batch::JobQueue": "Tags",
    "AWS::Logs::LogGroup": "Tags",
    "AWS::Events::Rule": "Tags",
    "AWS::SNS::Topic": "Tags",
    "AWS::CloudWatch::Alarm": "Tags",
    "AWS::CloudWatch::Dashboard": "Tags",
    "AWS::Budgets::Budget": "ResourceTags",
}
# Types that CloudFormation cannot tag (attachments, routes, policies, filters...).
NOT_TAGGABLE = {
    "AWS::EC2::VPCGatewayAttachment",
    "AWS::EC2::Route",
    "AWS::EC2::SubnetRouteTableAssociation",
    "AWS::S3::BucketPolicy",
    "AWS::IAM::InstanceProfile",
    "AWS::Logs::ResourcePolicy",
    "AWS::Logs::MetricFilter",
    "AWS::SNS::Subscription",
}
STACK_NAME = {"Ref": "AWS::StackName"}


def tag_map(tags: Any) -> dict[str, Any]:
    """Tags written as a list of {Key, Value} or as a map, as a map."""
    if isinstance(tags, list):
        return {t["Key"]: t["Value"] for t in tags}
    assert isinstance(tags, dict), tags
    return dict(tags)


def resource_tags(resource: dict[str, Any]) -> dict[str, Any]:
    props = resource["Properties"]
    prop = TAGGABLE[resource["Type"]]
    if prop == "TagSpecifications":
        (spec,) = [s for s in props[prop] if s["ResourceType"] == "launch-template"]
        return tag_map(spec["Tags"])
    return tag_map(props.get(prop, []))


def test_taggable_types_are_those_cloudformation_tags(template: dict[str, Any]) -> None:
    """Every type of the template is sorted, and as cfn-lint's resource schemas say."""
    kinds = {r["Type"] for r in template["Resources"].values()}
    assert kinds <= set(TAGGABLE) | NOT_TAGGABLE, kinds - set(TAGGABLE) - NOT_TAGGABLE
    for kind in kinds:
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", kind).schema
        taggable = bool(schema.get("tagging", {}).get("taggable"))
        if kind in NOT_TAGGABLE:
            assert not taggable, f"{kind} can carry tags"
        elif kind != "AWS::EC2::LaunchTemplate":  # tagged through TagSpecifications
            assert taggable, kind
            assert schema["tagging"]["tagProperty"] == f"/properties/{TAGGABLE[kind]}", kind


def test_every_taggable_resource_has_the_cost_tags(template: dict[str, Any]) -> None:
    checked = 0
    for name, resource in template["Resources"].items():
        if resource["Type"] not in TAGGABLE:
            continue
        tags = resource_tags(resource)
        assert tags.get(COST_TAG) == STACK_NAME, f"{name} lacks the tag {COST_TAG}"
        assert tags.get(COMPONENT_TAG) in COMPONENTS, f"{name}: {tags.get(COMPONENT_TAG)}"
        checked += 1
    assert checked >= 23  # the network, the bucket, ..., Batch, the monitoring part
    # The budget and Cost Explorer show the tag only once it is activated.
    assert "cost allocation tag" in template["Metadata"]["cryosnake"]["CostAllocationTags"]
    assert "Activate" in template["Metadata"]["cryosnake"]["CostAllocationTags"]


def test_batch_instances_volumes_queue_and_environments_are_tagged(
    template: dict[str, Any],
) -> None:
    (launch,) = resources(template, "AWS::EC2::LaunchTemplate").values()
    specs = {
        s["ResourceType"]: tag_map(s["Tags"])
        for s in launch["Properties"]["LaunchTemplateData"]["TagSpecifications"]
    }
    assert set(specs) == {"instance", "volume"}
    assert specs["instance"][COST_TAG] == STACK_NAME
    assert specs["volume"] == {COST_TAG: STACK_NAME, COMPONENT_TAG: "batch-volume"}

    envs = resources(template, "AWS::Batch::ComputeEnvironment")
    assert len(envs) == 3
    for name, env in envs.items():
        res = env["Properties"]["ComputeResources"]
        assert res["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "InstanceLaunchTemplate"}
        gpu = res["Ec2Configuration"][0]["ImageType"].endswith("_NVIDIA")
        component = "batch-gpu" if gpu else "batch-cpu"
        instance_tags = tag_map(res["Tags"])  # the instances Batch launches
        assert instance_tags[COST_TAG] == STACK_NAME, name
        assert instance_tags[COMPONENT_TAG] == component, name
        env_tags = tag_map(env["Properties"]["Tags"])  # the environment itself
        assert env_tags == {COST_TAG: STACK_NAME, COMPONENT_TAG: component}, name
    (queue,) = resources(template, "AWS::Batch::JobQueue").values()
    assert tag_map(queue["Properties"]["Tags"])[COST_TAG] == STACK_NAME


# ------------------------------------------------------------------ budget


def substitute(value: Any, variables: dict[str, str]) -> str:
    """An Fn::Sub string (or plain string) with its ${...} replaced from ``variables``.

    Like CloudFormation: ``${Name}`` and ``${Resource.Attribute}`` are variables,
    ``${!Literal}`` is written as ``${Literal}``; an unknown variable is a KeyError.
    """
    if isinstance(value, str):
        return value
    text = value["Fn::Sub"]
    if isinstance(text, list):
        text, extra = text
        variables = {**variables, **extra}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return "${" + name[1:] + "}" if name.startswith("!") else variables[name]

    return re.sub(r"\$\{([^}]+)\}", replace, text)


def sample_variables(template: dict[str, Any], stack: str = STACK) -> dict[str, str]:
    """Sample values of every variable an Fn::Sub of the template may use."""
    region = "eu-west-1"
    values = {
        "AWS::StackName": stack,
        "AWS::Region": region,
        "AWS::AccountId": "123456789012",
        "AWS::Partition": "aws",
        "JobQueue": f"arn:aws:batch:{region}:123456789012:job-queue/{stack}-JobQueue-X",
        "DataBucket": f"{stack}-databucket-x",
        "JobEventsLogGroup": f"/aws/events/{stack}/batch-job-state",
        "Dashboard": f"{stack}-batch",
        "AlarmTopic.TopicName": f"{stack}-AlarmTopic-X",
    }
    for name, parameter in template["Parameters"].items():
        values.setdefault(name, str(parameter.get("Default", "")))
    return values


def test_budget_only_with_an_alert_email_and_on_the_cost_tag(template: dict[str, Any]) -> None:
    (budget_id, budget), *others = resources(template, "AWS::Budgets::Budget").items()
    assert not others
    # only with AlertEmail, which is empty by default
    assert budget["Condition"] == "HasAlertEmail"
    assert template["Conditions"]["HasAlertEmail"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlertEmail"}, ""]}]
    }
    email = template["Parameters"]["AlertEmail"]
    assert email["Type"] == "String" and email["Default"] == ""
    assert re.fullmatch(email["AllowedPattern"], "")
    assert re.fullmatch(email["AllowedPattern"], "someone@example.org")
    assert not re.fullmatch(email["AllowedPattern"], "someone at example.org")
    limit = template["Parameters"]["MonthlyBudgetUsd"]
    assert limit["Type"] == "Number" and limit["Default"] == 200

    data = budget["Properties"]["Budget"]
    assert (data["BudgetType"], data["TimeUnit"]) == ("COST", "MONTHLY")
    assert data["BudgetLimit"] == {"Amount": {"Ref": "MonthlyBudgetUsd"}, "Unit": "USD"}
    (tag_filter,) = data["CostFilters"]["TagKeyValue"]
    assert substitute(tag_filter, sample_variables(template)) == f"user:{COST_TAG}${STACK}"
    assert set(data["CostFilters"]) == {"TagKeyValue"}

    notifications = {
        (n["Notification"]["NotificationType"], n["Notification"]["Threshold"]): n
        for n in budget["Properties"]["NotificationsWithSubscribers"]
    }
    assert set(notifications) == {("ACTUAL", 80), ("FORECASTED", 100)}
    for n in notifications.values():
        assert n["Notification"]["ThresholdType"] == "PERCENTAGE"
        assert n["Notification"]["ComparisonOperator"] == "GREATER_THAN"
        assert n["Subscribers"] == [{"SubscriptionType": "EMAIL", "Address": {"Ref": "AlertEmail"}}]
    assert budget_id not in json.dumps(template["Outputs"])  # absent without AlertEmail


# ------------------------------------------------------------------ job-state events

JOB_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
SAMPLE_QUEUE = "arn:aws:batch:us-east-1:123456789012:job-queue/cryosnake-test-JobQueue-X"


def batch_event(status: str, reason: str = "", queue: str = SAMPLE_QUEUE) -> dict[str, Any]:
    """A "Batch Job State Change" event as EventBridge delivers it (AWS Batch docs)."""
    job = "arn:aws:batch:us-east-1:123456789012:job/4c7599ae-0a82-49aa-ba5a-4727fcce14a8"
    detail: dict[str, Any] = {
        "jobArn": job,
        "jobName": "snakejob-ctf-12",
        "jobId": "4c7599ae-0a82-49aa-ba5a-4727fcce14a8",
        "jobQueue": queue,
        "status": status,
        "attempts": [],
        "createdAt": 1641944200058,
        "dependsOn": [],
        "jobDefinition": "arn:aws:batch:us-east-1:123456789012:job-definition/snakejob:1",
        "parameters": {},
        "container": {"image": "cryosnake:0.1.0-gpu", "command": ["snakemake"]},
        "tags": {},
        "platformCapabilities": ["EC2"],
    }
    if reason:
        detail["statusReason"] = reason
    return {
        "version": "0",
        "id": "c8f9c4b5-76e5-d76a-f980-7011e206042b",
        "detail-type": "Batch Job State Change",
        "source": "aws.batch",
        "account": "123456789012",
        "time": "2026-01-11T23:36:40Z",
        "region": "us-east-1",
        "resources": [job],
        "detail": detail,
    }


def cancel_reason(reason: str) -> str:
    """statusReason of a job that JobStateTimeLimitActions cancelled (AWS Batch docs)."""
    return f"Canceled by JobStateTimeLimit action due to reason: {reason}"


_TOKEN = re.compile(
    r"\s*(?:(?P<op>&&|\|\||!=|=|\(|\)|\{|\})|(?P<sel>\$(?:\.[\w-]+)+)"
    r'|"(?P<str>[^"]*)"|%(?P<regex>[^%]*)%|(?P<bare>[^\s()=!&|{}"%]+))'
)


def filter_pattern_matches(pattern: str, message: str) -> bool:
    """Whether a CloudWatch Logs JSON filter pattern matches a log event's message.

    The subset the template uses: ``{ ... }`` around comparisons ``$.a.b = value`` or
    ``!=``, with ``&&`` (binding tighter) and ``||`` and parentheses. A value is a
    "string" or a bare word or number (``*`` matches any characters, the whole value
    must match), or a %regex% (found anywhere in the value). A field that is absent or
    not a string or number matches nothing. A pattern outside this subset is an error.
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(pattern.rstrip()):
        match = _TOKEN.match(pattern, pos)
        assert match, f"cannot read the filter pattern at {pattern[pos:]!r}"
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    event = json.loads(message)

    def take(expected: str | None = None) -> tuple[str, str]:
        kind, text = tokens.pop(0)
        assert expected is None or (kind, text) == ("op", expected), (expected, text)
        return kind, text

    def field(selector: str) -> Any:
        value: Any = event
        for key in selector.split(".")[1:]:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    def comparison() -> bool:
        if tokens[0] == ("op", "("):
            take("(")
            result = either()
            take(")")
            return result
        kind, selector = take()
        assert kind == "sel", selector
        _, op = take()
        assert op in ("=", "!="), op
        kind, wanted = take()
        value = field(selector)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return False
        if kind == "regex":
            equal = re.search(wanted, str(value)) is not None
        else:
            assert kind in ("str", "bare"), kind
            # only "*" is special: escape what fnmatch would read as a pattern
            regex = fnmatch.translate(wanted.replace("[", "[[]").replace("?", "[?]"))
            equal = re.match(regex, str(value)) is not None
        return equal if op == "=" else not equal

    def both() -> bool:
        result = comparison()
        while tokens and tokens[0] == ("op", "&&"):
            take("&&")
            result = comparison() and result
        return result

    def either() -> bool:
        result = both()
        while tokens and tokens[0] == ("op", "||"):
            take("||")
            result = both() or result
        return result

    take("{")
    result = either()
    take("}")
    assert not tokens, tokens
    return result


def test_filter_pattern_evaluator() -> None:
    """The evaluator itself, on the examples of the CloudWatch Logs documentation."""
    message = json.dumps(
        {"eventType": "UpdateTrail", "sourceIPAddress": "123.123.4.5", "user": {"id": 1}}
    )
    assert filter_pattern_matches('{ $.eventType = "UpdateTrail" }', message)
    assert not filter_pattern_matches('{ $.eventType = "DeleteTrail" }', message)
    assert not filter_pattern_matches("{ $.sourceIPAddress != 123.123.* }", message)
    assert filter_pattern_matches('{ $.sourceIPAddress = "123.123.*" }', message)
    assert filter_pattern_matches("{ ($.user.id = 1) && ($.eventType = %Trail$%) }", message)
    assert not filter_pattern_matches("{ ($.user.id = 2) && ($.eventType = %Trail%) }", message)
    assert filter_pattern_matches("{ ($.user.id = 2) || ($.eventType = %Update|Delete%) }", message)
    assert not filter_pattern_matches('{ $.missing = "UpdateTrail" }', message)
    assert not filter_pattern_matches('{ $.user = "1" }', message)
    with pytest.raises(AssertionError):
        filter_pattern_matches("{ $.eventType ~ x }", message)


def metric_filters(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The metric filters of the template by metric name, each with its one transformation."""
    found = {}
    for name, resource in resources(template, "AWS::Logs::MetricFilter").items():
        (transformation,) = resource["Properties"]["MetricTransformations"]
        assert transformation["MetricNamespace"] == {"Fn::Sub": "cryosnake/${AWS::StackName}"}
        assert transformation["MetricValue"] == "1"
        assert resource["Properties"]["LogGroupName"] == {"Ref": "JobEventsLogGroup"}, name
        found[transformation["MetricName"]] = {
            "pattern": resource["Properties"]["FilterPattern"],
            "transformation": transformation,
        }
    return found


def queue_reasons(template: dict[str, Any]) -> set[str]:
    (queue,) = resources(template, "AWS::Batch::JobQueue").values()
    return {a["Reason"] for a in queue["Properties"]["JobStateTimeLimitActions"]}


def test_event_rule_sends_the_queues_job_state_changes_to_a_log_group(
    template: dict[str, Any],
) -> None:
    (rule,) = resources(template, "AWS::Events::Rule").values()
    props = rule["Properties"]
    assert props["State"] == "ENABLED"
    queues = [{"Ref": name} for name in resources(template, "AWS::Batch::JobQueue")]
    assert props["EventPattern"] == {
        "source": ["aws.batch"],
        "detail-type": ["Batch Job State Change"],
        "detail": {"jobQueue": queues},
    }
    (target,) = props["Targets"]
    # the log group's ARN, without the ":*" of its Arn attribute
    variables = sample_variables(template)
    arn = substitute(target["Arn"], variables)
    group = variables["JobEventsLogGroup"]
    assert arn == f"arn:aws:logs:eu-west-1:123456789012:log-group:{group}"

    log_group = template["Resources"]["JobEventsLogGroup"]
    assert log_group["Type"] == "AWS::Logs::LogGroup" and "Condition" not in log_group
    assert substitute(log_group["Properties"]["LogGroupName"], variables) == group
    assert group.startswith("/aws/events/")
    assert log_group["Properties"]["RetentionInDays"] == 30

    # EventBridge may write to it: the log group's resource policy.
    (policy,) = resources(template, "AWS::Logs::ResourcePolicy").values()
    arn_attribute = "arn:aws:logs:eu-west-1:123456789012:log-group:GROUP:*"
    document = json.loads(
        substitute(
            policy["Properties"]["PolicyDocument"],
            {**variables, "JobEventsLogGroup.Arn": arn_attribute},
        )
    )
    (statement,) = document["Statement"]
    assert statement["Effect"] == "Allow"
    assert "events.amazonaws.com" in statement["Principal"]["Service"]
    assert {"logs:CreateLogStream", "logs:PutLogEvents"} <= set(statement["Action"])
    assert statement["Resource"] == arn_attribute


def test_job_state_metric_counts_every_state_with_its_dimension(template: dict[str, Any]) -> None:
    state = metric_filters(template)["JobStateChanges"]
    assert state["transformation"]["Dimensions"] == [{"Key": "Status", "Value": "$.detail.status"}]
    assert "DefaultValue" not in state["transformation"]  # not allowed with dimensions
    for status in JOB_STATES:
        assert filter_pattern_matches(state["pattern"], json.dumps(batch_event(status)))
    # an event of no known state makes no new dimension value
    assert not filter_pattern_matches(state["pattern"], json.dumps(batch_event("UNKNOWN")))


@pytest.mark.parametrize("status", JOB_STATES)
def test_failed_jobs_metric_counts_failed_jobs_only(template: dict[str, Any], status: str) -> None:
    failed = metric_filters(template)["FailedJobs"]
    message = json.dumps(batch_event(status, "Essential container in task exited"))
    assert filter_pattern_matches(failed["pattern"], message) == (status == "FAILED")
    assert failed["transformation"]["DefaultValue"] == 0


def test_blocked_jobs_metric_counts_jobs_the_queue_cancelled(template: dict[str, Any]) -> None:
    blocked = metric_filters(template)["BlockedJobs"]
    pattern = blocked["pattern"]
    assert blocked["transformation"]["DefaultValue"] == 0
    reasons = queue_reasons(template)
    assert len(reasons) == 3
    for reason in reasons:
        # a job cancelled for each reason of the queue counts ...
        cancelled = batch_event("FAILED", cancel_reason(reason))
        assert filter_pattern_matches(pattern, json.dumps(cancelled)), reason
        # ... not one still waiting with that reason, nor the same text in another state
        for status in JOB_STATES[:-1]:
            waiting = batch_event(status, f"{reason} - Service cannot fulfill the capacity")
            assert not filter_pattern_matches(pattern, json.dumps(waiting)), (status, reason)
    for other in (
        "Essential container in task exited",
        "Host EC2 (instance i-0123456789abcdef0) terminated.",
        "user cancelled the run",
        "",
    ):
        assert not filter_pattern_matches(pattern, json.dumps(batch_event("FAILED", other)))
    # Filter-pattern regexes take no colon: the pattern names the code after it.
    regex = re.search(r"%([^%]*)%", pattern)
    assert regex is not None
    assert set(regex.group(1).split("|")) == {r.split(":", 1)[1] for r in reasons}


def test_blocked_queue_alarm_notifies_the_topic(template: dict[str, Any]) -> None:
    (alarm,) = resources(template, "AWS::CloudWatch::Alarm").values()
    props = alarm["Properties"]
    blocked = metric_filters(template)["BlockedJobs"]["transformation"]
    assert props["Namespace"] == blocked["MetricNamespace"]
    assert props["MetricName"] == blocked["MetricName"] == "BlockedJobs"
    assert (props["Statistic"], props["Period"], props["EvaluationPeriods"]) == ("Sum", 300, 1)
    assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert props["Threshold"] == 1
    assert props["TreatMissingData"] == "notBreaching"
    (topic_id,) = resources(template, "AWS::SNS::Topic")
    assert props["AlarmActions"] == [{"Ref": topic_id}]
    (subscription,) = resources(template, "AWS::SNS::Subscription").values()
    assert subscription["Condition"] == "HasAlertEmail"
    assert subscription["Properties"] == {
        "TopicArn": {"Ref": topic_id},
        "Protocol": "email",
        "Endpoint": {"Ref": "AlertEmail"},
    }
    assert template["Outputs"]["AlarmTopicArn"]["Value"] == {"Ref": topic_id}


def dashboard_metrics(body: dict[str, Any]) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """(widget title, metric without its options, widget properties) of every metric."""
    found = []
    for widget in body["widgets"]:
        props = widget["properties"]
        for metric in props.get("metrics", []):
            plain = [m for m in metric if not isinstance(m, dict)]
            found.append((props["title"], plain, props))
    return found


def test_dashboard_body_is_json_and_shows_the_metrics(template: dict[str, Any]) -> None:
    (dashboard_id, dashboard), *others = resources(template, "AWS::CloudWatch::Dashboard").items()
    assert not others
    variables = sample_variables(template)
    body = json.loads(substitute(dashboard["Properties"]["DashboardBody"], variables))
    metrics = dashboard_metrics(body)
    for widget in body["widgets"]:
        assert widget["type"] in {"metric", "text"}
        assert widget["x"] + widget["width"] <= 24
        if widget["type"] == "metric":
            assert widget["properties"]["region"] == "eu-west-1"

    # job metrics: the namespace and names the metric filters write
    namespace = f"cryosnake/{STACK}"
    filters = metric_filters(template)
    ours = [m for _, m, _ in metrics if m[0] == namespace]
    assert {m[1] for m in ours} == set(filters)
    states = {m[3] for m in ours if m[1] == "JobStateChanges" and m[2] == "Status"}
    assert states == set(JOB_STATES)
    assert ["cryosnake/" + STACK, "FailedJobs"] in ours
    assert ["cryosnake/" + STACK, "BlockedJobs"] in ours

    # running vCPUs: AWS/Usage counts the whole account, and the title says so
    usage = [
        (title, dict(zip(m[2::2], m[3::2], strict=True)))
        for title, m, _ in metrics
        if m[:2] == ["AWS/Usage", "ResourceCount"]
    ]
    assert usage
    classes = set()
    for title, dims in usage:
        assert "account" in title
        assert (dims["Service"], dims["Type"], dims["Resource"]) == ("EC2", "Resource", "vCPU")
        classes.add(dims["Class"])
    assert {"Standard/OnDemand", "Standard/Spot", "G/OnDemand", "G/Spot"} <= classes

    # the bucket's size, daily
    s3 = [(m, p) for _, m, p in metrics if m[:2] == ["AWS/S3", "BucketSizeBytes"]]
    standard = [
        p
        for m, p in s3
        if dict(zip(m[2::2], m[3::2], strict=True))
        == {"BucketName": variables["DataBucket"], "StorageType": "StandardStorage"}
    ]
    assert standard and standard[0]["period"] == 86400

    # outputs: the name and a console link to it
    assert template["Outputs"]["DashboardName"]["Value"] == {"Ref": dashboard_id}
    url = substitute(template["Outputs"]["DashboardUrl"]["Value"], variables)
    assert url == (
        "https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1"
        f"#dashboards:name={STACK}-batch"
    )
    assert substitute(dashboard["Properties"]["DashboardName"], variables) == f"{STACK}-batch"


@MOTO_SKIPS_BUCKET_POLICY
def test_job_state_events_reach_the_log_group_on_moto(
    aws_env: str, template: dict[str, Any]
) -> None:
    """On moto's EventBridge, the rule sends this queue's job state changes, and only
    them, to the log group; the metric filter patterns count the delivered messages."""
    outputs = create_stack(template)
    assert set(outputs) == set(aws_stack.OUTPUT_NAMES) | MONITORING_OUTPUTS
    queue = outputs["JobQueueArn"]
    sent = [
        batch_event("RUNNING", queue=queue),
        batch_event("FAILED", "Essential container in task exited", queue=queue),
        batch_event("FAILED", cancel_reason("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"), queue),
        batch_event("FAILED", "of another queue", queue=queue + "-other"),
    ]
    entries = [
        {"Source": e["source"], "DetailType": e["detail-type"], "Detail": json.dumps(e["detail"])}
        for e in sent
    ]
    assert boto3.client("events").put_events(Entries=entries)["FailedEntryCount"] == 0
    group = f"/aws/events/{STACK}/batch-job-state"
    logs = boto3.client("logs")
    logged = [e["message"] for e in logs.filter_log_events(logGroupName=group)["events"]]
    reasons = sorted(json.loads(m)["detail"].get("statusReason", "") for m in logged)
    assert reasons == [
        "",
        cancel_reason("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"),
        "Essential container in task exited",
    ]
    counts = {
        metric: sum(filter_pattern_matches(f["pattern"], m) for m in logged)
        for metric, f in metric_filters(template).items()
    }
    assert counts == {"JobStateChanges": 3, "FailedJobs": 2, "BlockedJobs": 1}

    # The dashboard moto stored is JSON and shows the stack's bucket.
    cloudwatch = boto3.client("cloudwatch")
    body = json.loads(
        cloudwatch.get_dashboard(DashboardName=outputs["DashboardName"])["DashboardBody"]
    )
    assert outputs["BucketName"] in json.dumps(body)
    assert outputs["DashboardUrl"].endswith(f"#dashboards:name={outputs['DashboardName']}")
    assert outputs["AlarmTopicArn"].startswith("arn:aws:sns:us-east-1:")

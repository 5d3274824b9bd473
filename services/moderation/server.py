"""The ModerationService: protos in, the moderator and the output window, verdicts out, every
verdict on the trail."""
import time

import grpc
from prometheus_client import Counter

from meshllm.api.moderation.v1 import moderation_pb2 as m, moderation_pb2_grpc
from meshllm.errors import CallRefused
from meshllm.moderation_policy import ModerationRules, word_for
from meshllm.request_context import current_request_id
from meshllm.tenancy import Tenancy, required_tenancy
from services.moderation.audit_store import VerdictEntry
from services.moderation.audit_writer import AuditWriter
from services.moderation.config import ModerationSettings
from services.moderation.moderator import Decision, Moderator
from services.moderation.output_window import OutputWindow


VERDICTS = Counter(
    "meshllm_moderation_verdicts",
    "Verdicts on the trail, by stage, category and action (allow: a text or window with no "
    "finding acted on)", ["stage", "category", "action"])


def tenancy_of(context: grpc.aio.ServicerContext) -> Tenancy:
    return required_tenancy(
        context.invocation_metadata(),
        "moderation judges text under a tenant's policy, from the x-meshllm-tenant and "
        "x-meshllm-policy-bin metadata that Envoy's ext_authz sets (the router passes them on)")


def _invalid(field: str, message: str) -> CallRefused:
    return CallRefused(grpc.StatusCode.INVALID_ARGUMENT, message, reason="INVALID_TEXT",
                       field=field)


class ModerationServicer(moderation_pb2_grpc.ModerationServiceServicer):
    def __init__(self, moderator: Moderator, audit: AuditWriter, settings: ModerationSettings):
        self._moderator = moderator
        self._audit = audit
        self._settings = settings

    async def ModerateText(self, request: m.ModerateTextRequest, context):
        tenancy = tenancy_of(context)
        self._check_texts(request.texts)
        if request.stage not in (m.STAGE_UNSPECIFIED, m.STAGE_INPUT, m.STAGE_OUTPUT):
            raise _invalid("stage", f"stage {request.stage} is unknown; use STAGE_INPUT or "
                                    "STAGE_OUTPUT")
        stage = request.stage or m.STAGE_INPUT
        rules = ModerationRules(tenancy.policy)
        response = m.ModerateTextResponse(policy_version=tenancy.policy_version)
        for text in request.texts:
            judgement = await self._moderator.judge(text, rules, stage)
            response.texts.add(text=judgement.text,
                               verdicts=[d.verdict() for d in judgement.decisions])
            response.action = max(response.action, judgement.action)
            self._record(tenancy, stage, judgement.decisions)
        return response

    async def ModerateStream(self, requests, context):
        tenancy = tenancy_of(context)
        window = OutputWindow(self._moderator, ModerationRules(tenancy.policy))
        blocked = False
        async for request in requests:
            if blocked:
                continue  # until the caller half-closes: ending first would reset the stream
            if len(request.text.encode()) > self._settings.max_window_bytes:
                raise _invalid("text", f"a window is at most {self._settings.max_window_bytes} "
                                       "bytes of UTF-8; send the output in smaller windows")
            verdict = await window.judge(request.text, request.end)
            self._record(tenancy, m.STAGE_OUTPUT, verdict.decisions)
            yield verdict.to_proto()
            blocked = verdict.action == m.ACTION_BLOCK

    def _check_texts(self, texts) -> None:
        if not texts:
            raise _invalid("texts", "texts is empty: send at least one text to judge")
        if len(texts) > self._settings.max_texts:
            raise _invalid("texts", f"texts holds {len(texts)}; at most "
                                    f"{self._settings.max_texts} per call")
        for index, text in enumerate(texts):
            if not text:
                raise _invalid(f"texts[{index}]", f"texts[{index}] is empty")
            if len(text.encode()) > self._settings.max_text_bytes:
                raise _invalid(f"texts[{index}]", f"texts[{index}] is "
                                                  f"{len(text.encode())} bytes; at most "
                                                  f"{self._settings.max_text_bytes}")

    def _record(self, tenancy: Tenancy, stage: int, decisions: list[Decision]) -> None:
        """Every verdict on the trail: each decision, or one ALLOW when nothing was acted on."""
        base = dict(request_id=current_request_id(), tenant_id=tenancy.tenant, stage=stage,
                    time_ns=time.time_ns(), policy_version=tenancy.policy_version)
        entries = [VerdictEntry(category=d.finding.category, action=d.action,
                                detector=d.finding.detector, score=d.finding.score, **base)
                   for d in decisions] or [VerdictEntry(
                       category=m.CATEGORY_UNSPECIFIED, action=m.ACTION_ALLOW, detector="",
                       score=0.0, **base)]
        for entry in entries:
            self._audit.submit(entry)
            VERDICTS.labels(word_for(m.Stage, stage), word_for(m.Category, entry.category),
                            word_for(m.Action, entry.action)).inc()

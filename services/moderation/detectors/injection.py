"""Prompt injection found by phrase: text that tells the model to drop its instructions, to
become an unrestricted persona, or to give its system prompt away.

Each phrase needs its object ("ignore the previous *instructions*", not "ignore the previous
email"), which keeps ordinary requests to disregard something out."""
import re

from meshllm.api.moderation.v1 import moderation_pb2
from services.moderation.detectors.lexicon import spaced
from services.moderation.findings import Finding

PROMPT_INJECTION = moderation_pb2.CATEGORY_PROMPT_INJECTION
SCORE = 0.9

DROP = (r"(?:ignore|disregard|forget|override|bypass|discard|abandon|set aside|throw out"
        r"|stop following|stop obeying|no longer follow)")
PRIOR = (r"(?:previous|prior|above|earlier|preceding|original|initial|foregoing|system"
         r"|existing|old|given)")
ORDERS = (r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails"
          r"|constraints|programming|context|commands|system prompt|system message)")
PERSONA = (r"(?:(?:dan|stan|dude)\b|an? (?:unfiltered|unrestricted|uncensored|jailbroken|evil"
           r"|amoral|rogue|unaligned|unbound|unchained) (?:ai|model|assistant|chatbot|version"
           r"|persona)\b)")
RESTRICTIONS = (r"(?:restrictions|rules|guidelines|filters|limits|limitations"
                r"|content polic(?:y|ies)|censorship|ethical (?:constraints|guidelines)"
                r"|safety (?:rules|guidelines|filters))")
SECRET_PROMPT = (r"(?:system prompt|system message|initial instructions|hidden instructions"
                 r"|original instructions|developer message|instructions (?:above|you were given)"
                 r"|prompt above|pre-?prompt)")

PHRASES = (
    rf"{DROP} (?:all |any |every )?(?:of )?(?:the |your |my |these |those )?{PRIOR} {ORDERS}",
    rf"{DROP} (?:all |any )?(?:of )?your (?:(?:developer|creator|maker|owner)'?s'? )?"
    rf"(?:instructions|rules|guidelines|programming|training|system prompt|restrictions"
    rf"|safety \w+|content polic(?:y|ies)|guardrails)",
    rf"{DROP} (?:all )?(?:the )?(?:instructions|rules|guidelines) (?:in|from|of) (?:your|the)"
    rf" (?:system prompt|system message|configuration|prompt)",
    rf"(?:what|which) (?:were|are) (?:the |your )?(?:exact |original |initial |hidden |secret ){{0,3}}"
    rf"(?:instructions|rules) (?:that )?you (?:were|have been|'ve been) given",
    r"(?:repeat|print|output|show|reveal) (?:me )?(?:everything|all|all the text|the text|anything)"
    r" (?:above|before) (?:this|here)",
    rf"(?:ignore|disregard|forget) (?:everything|all|anything) (?:above|before this|prior"
    rf"|(?:that )?you (?:were|have been|'ve been) told)",
    r"disregard the above",
    rf"you are (?:now|no longer bound|free),? (?:to be )?(?:{PERSONA}|in (?:developer|god"
    rf"|jailbreak|dan|unrestricted) mode|(?:free )?(?:of|from|by) (?:all |any )?(?:your )?"
    rf"{RESTRICTIONS})",
    rf"(?:act|respond|answer|behave|reply) (?:only )?as (?:if you were )?{PERSONA}",
    r"(?:developer|god|jailbreak|dan) mode (?:is )?(?:now )?(?:enabled|activated|on|unlocked)",
    r"(?:enable|activate|enter|switch to) (?:developer|god|jailbreak|dan) mode",
    r"do anything now",
    rf"(?:reveal|show|print|output|repeat|display|tell|give|leak|dump|paste|share|write out)"
    rf" (?:me |us )?(?:back )?(?:your|the) (?:full |entire |exact |original |hidden |secret |"
    rf"initial |complete |verbatim ){{0,3}}{SECRET_PROMPT}",
    rf"what (?:is|was|were) (?:in )?your {SECRET_PROMPT}",
    rf"(?:pretend|imagine|act as if|suppose) (?:that )?you (?:have|had|are under|were under"
    rf"|operate with) no {RESTRICTIONS}",
    # "your": turning off the content filter of a router is an ordinary question.
    rf"(?:disable|turn off|remove|deactivate|switch off) (?:all )?(?:of )?your (?:safety"
    rf"|content|moral|ethical) (?:filters?|guidelines|restrictions|protocols|checks)",
    rf"from now on,? you (?:will|must|shall|are to) (?:answer|respond|reply|act)[^.]{{0,40}}"
    rf"(?:without|with no|free of) (?:any )?{RESTRICTIONS}",
    rf"(?:new|updated|real|actual) (?:system )?instructions ?:",
    # Chat-template markers; not a bare "[system]", which is also a TOML table.
    r"<\|im_start\|> ?system|<\|system\|>|\[/?inst\]|<<sys>>|### ?(?:system|instruction)s? ?:",
    r"stay in character no matter what",
    r"(?:you|this ai) (?:must|will) never refuse",
)

INJECTION = re.compile(
    r"(?<!\w)(?:" + "|".join(spaced(phrase) for phrase in PHRASES) + ")", re.IGNORECASE)


class InjectionDetector:
    """Finds prompt injection phrases in a text."""

    def find(self, text: str) -> list[Finding]:
        return [Finding(PROMPT_INJECTION, m.start(), m.end(), SCORE, "rules/injection",
                        "PROMPT_INJECTION")
                for m in INJECTION.finditer(text)]

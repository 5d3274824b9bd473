"""Passages placed in a request's prompt, numbered so that the model can cite them.

The router does not have the model's tokenizer, so lengths are estimated high: a token per
three bytes of UTF-8 (English text runs about four bytes a token in the tokenizers this mesh
serves; text in other scripts runs fewer, and a CJK character is three bytes and about a
token). A passage that would not fit whole is left out, with every one after it."""
from meshllm.api.inference.v1 import inference_pb2 as inference
from meshllm.api.retrieval.v1 import retrieval_pb2 as r

BYTES_PER_TOKEN = 3
UNKNOWN_CONTEXT_BUDGET = 1024
"""Tokens for passages when the model's replicas did not say how long its context is."""
INSTRUCTION = ("Answer using the numbered sources below. Cite a source by its number in "
               "brackets, like [1]. If the sources do not answer the question, say so.")


def estimated_tokens(request: inference.GenerateRequest) -> int:
    if request.WhichOneof("input") == "chat":
        return sum(text_tokens(m.content) + 4 for m in request.chat.messages)
    return text_tokens(request.prompt)


def text_tokens(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN + 1


def question_of(request: inference.GenerateRequest) -> str:
    """What to search for: the last user message of a conversation, or the prompt."""
    if request.WhichOneof("input") == "chat":
        users = [m.content for m in request.chat.messages if m.role == inference.ROLE_USER]
        return users[-1] if users else request.chat.messages[-1].content
    return request.prompt


def source(number: int, passage: r.Passage) -> str:
    return f"[{number}] (document {passage.document_id})\n{passage.text}"


def place_passages(request: inference.GenerateRequest, passages: list[r.Passage],
                   budget_tokens: int) -> list[r.Passage]:
    """Puts the passages that fit `budget_tokens` into the request, best first; returns them.
    A conversation gets them in its system message (one is added if it has none); a raw
    prompt gets them before it."""
    placed, used = [], text_tokens(INSTRUCTION)
    for passage in passages:
        used += text_tokens(source(len(placed) + 1, passage)) + 1
        if used > budget_tokens:
            break
        placed.append(passage)
    if not placed:
        return []
    block = "\n\n".join([INSTRUCTION, *(source(n, p) for n, p in enumerate(placed, 1))])
    if request.WhichOneof("input") == "chat":
        messages = request.chat.messages
        if messages and messages[0].role == inference.ROLE_SYSTEM:
            messages[0].content = f"{messages[0].content}\n\n{block}"
        else:
            messages.insert(0, inference.ChatMessage(role=inference.ROLE_SYSTEM, content=block))
    else:
        request.prompt = f"{block}\n\n{request.prompt}"
    return placed

"""An LLM judge: a chat model grades each (request, response) for refusal, compliance and coherence from the
written rubric in :mod:`refusal_lab.evaluation.rubric` (grades 0 / 1 / 2, read as 0 / 0.5 / 1), after a relevance
grade that makes it check the topic first.

Local model (any :func:`refusal_lab.models.load.load_model` spec; default the bundled
``qwen2.5-coder-1.5b-instruct``): nothing is generated. One prompt per item, rubric in the system turn, the
assistant turn opened with ``Relevance: ``; the grade is read from the next-token distribution over the digits
``0``/``1``/``2`` (renormalised over the three; ``reduce="argmax"`` takes the likeliest, ``"expected"`` rounds the
expected score to the nearest grade), then ``<grade>\\nRefusal: ``, ``<grade>\\nCompliance: `` and
``<grade>\\nCoherence: `` are teacher-forced in turn on the item's key/value cache and read the same way. The
rubric prefix shared by every prompt is run once per judge and its cache reused (as
:func:`refusal_lab.models.forward.prefix_batches` does).

Endpoint (``url``): POST ``{url}/chat/completions`` (OpenAI-compatible) with the rubric, temperature 0, and parse
the JSON object the rubric asks for; the bearer key comes from ``$REFUSAL_LAB_JUDGE_KEY`` (``api_key_env``).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.evaluation.judges import DEFAULT_JUDGE_MODEL, Judgement, ModelJudge, fingerprint_of
from refusal_lab.evaluation.rubric import FIELDS, GRADES, ITEM, JSON_FORMAT, LOCAL_FORMAT, RUBRIC
from refusal_lab.interventions.hooks import Intervention, apply_interventions
from refusal_lab.models.forward import run_prefix
from refusal_lab.models.load import LoadedModel

Ablation = Callable[[LoadedModel], "tuple[list[Intervention], str]"]
"""Given the judge's loaded model: the hooks that ablate its own refusal direction, and a hash identifying them."""
_SENTINEL = "\u2063ITEM\u2063"
_LABELS = {field: field.capitalize() for field in FIELDS}
_VALUES = torch.tensor(list(GRADES.values()))
_JUDGED = ("refusal", "compliance", "coherence")  # the Judgement's fields among the graded ones


class LlmJudge(ModelJudge):
    """Rubric-graded refusal / compliance / coherence by a local chat model or an OpenAI-compatible endpoint.

    ``model``: a model spec or an already loaded :class:`~refusal_lab.models.load.LoadedModel` (local), or the
    endpoint's model name (with ``url``). Responses longer than ``max_response_chars`` are cut there.
    ``ablation``: called once with the judge's loaded model, it returns the hooks that ablate the model's own
    refusal direction while it grades and a hash that identifies them (a safety-tuned judge otherwise grades
    harmful compliance as refusal); the pipeline builds it from a run directory."""

    def __init__(self, model=DEFAULT_JUDGE_MODEL, url: str | None = None,
                 api_key_env: str = "REFUSAL_LAB_JUDGE_KEY", rubric: str = RUBRIC, dtype: str = "auto",
                 device: str = "cpu", batch_size: int = 4, max_response_chars: int = 1500,
                 reduce: str = "argmax", cache: bool | Path = True, timeout_s: float = 120.0,
                 ablation: Ablation | None = None) -> None:
        if url and not isinstance(model, str):
            raise RefusalLabError("an endpoint judge needs the endpoint's model name: use --judge llm:<model name> "
                                  "with --judge-url")
        if reduce not in ("argmax", "expected"):
            raise RefusalLabError(f"reduce must be 'argmax' or 'expected', not {reduce!r}")
        if ablation is not None and url:
            raise RefusalLabError("--judge-ablate needs a local judge model, not an endpoint")
        super().__init__(model, "llm", dtype, device, cache)
        self.url, self.api_key_env, self.rubric, self.timeout_s = url, api_key_env, rubric, timeout_s
        self.batch_size, self.max_response_chars, self.reduce = batch_size, max_response_chars, reduce
        self._ablate = ablation
        self._ablation: tuple[list[Intervention], str] | None = None
        if ablation is not None:
            self.name += "-ablated"  # results and caches keep the two judges apart

    @property
    def ablation(self) -> tuple[list[Intervention], str] | None:
        """(hooks, hash) of the judge's own refusal ablation, resolved once on the loaded judge model; None for a
        judge without one."""
        if self._ablate is not None and self._ablation is None:
            self._ablation = self._ablate(self.lm)
        return self._ablation

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(judge="llm", model=self.model, url=self.url,
                              dtype=None if self.url else self._dtype_key,
                              rubric=self.rubric, answer=JSON_FORMAT if self.url else LOCAL_FORMAT, item=ITEM,
                              max_response_chars=self.max_response_chars, reduce=self.reduce,
                              ablated=self.ablation[1] if self.ablation else None)

    @property
    def interventions(self) -> list[Intervention]:
        """The hooks of :attr:`ablation`, else none."""
        return self.ablation[0] if self.ablation else []

    def _item(self, request: str, response: str) -> str:
        if len(response) > self.max_response_chars:
            response = response[: self.max_response_chars] + " [...]"
        return ITEM.format(request=request, response=response)

    def _score(self, requests: list[str], responses: list[str]) -> list[Judgement]:
        items = [self._item(q, r) for q, r in zip(requests, responses)]
        return self._score_endpoint(items) if self.url else self._score_local(items)

    # -- local model ---------------------------------------------------------------------------------------
    def _format(self, user: str) -> str:
        """The chat-formatted prompt: rubric as system turn (folded into the user turn where the model has no
        chat template or its template rejects a system turn), ending where the assistant's reply starts."""
        tokenizer, system = self.lm.tokenizer, self.rubric + LOCAL_FORMAT
        if getattr(tokenizer, "chat_template", None):
            try:
                return tokenizer.apply_chat_template(
                    [{"role": "system", "content": system}, {"role": "user", "content": user}],
                    tokenize=False, add_generation_prompt=True, enable_thinking=False)
            except Exception:  # noqa: BLE001 - templates raise their own errors for a system turn (e.g. Gemma)
                pass
        return self.lm.adapter.format_prompt(tokenizer, f"{system}\n\n{user}")

    def prompt(self, request: str, response: str) -> str:
        """The exact text the local judge scores for one item, up to the first answer slot."""
        return self._format(self._item(request, response)) + f"{_LABELS[FIELDS[0]]}: "

    def _encode(self, text: str) -> list[int]:
        return self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _setup(self) -> None:
        """Token ids of the grade digits, the teacher-forced continuations, and the shared prefix's cache."""
        if hasattr(self, "_grade_ids"):
            return
        head = f"{_LABELS[FIELDS[0]]}: "
        base = self._encode(head)
        self._grade_ids = []
        for digit in GRADES:
            ids = self._encode(head + digit)
            if len(ids) != len(base) + 1 or ids[: len(base)] != base:
                raise RefusalLabError(f"the judge model's tokenizer does not encode the grade {digit!r} as one token "
                                      f"after {head!r}; pick another judge model")
            self._grade_ids.append(ids[-1])
        self._continuations = {}
        for field, following in zip(FIELDS, FIELDS[1:]):
            rows = [self._encode(f"{digit}\n{_LABELS[following]}: ") for digit in GRADES]
            if len({len(r) for r in rows}) != 1:
                raise RefusalLabError("the judge model's tokenizer splits the answer lines unevenly; pick another "
                                      "judge model")
            self._continuations[field] = torch.tensor(rows)
        prefix = self._encode(self._format(ITEM.format(request=_SENTINEL, response="")).split(_SENTINEL)[0])
        self._prefix_ids = prefix[:-1]  # the last token may merge with the request's first characters
        with apply_interventions(self.lm, self.interventions):
            self._prefix = run_prefix(self.lm, self._prefix_ids)

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Grade index per row from the next-token logits over the three grade digits."""
        probs = torch.softmax(logits[:, self._grade_ids].float().cpu(), dim=-1)
        if self.reduce == "argmax":
            return probs.argmax(-1)
        return ((probs @ _VALUES)[:, None] - _VALUES).abs().argmin(-1)

    def _score_local(self, items: list[str]) -> list[Judgement]:
        self._setup()
        with apply_interventions(self.lm, self.interventions):
            return self._grade(items)

    @torch.no_grad()
    def _grade(self, items: list[str]) -> list[Judgement]:
        lm, n_prefix = self.lm, len(self._prefix_ids)
        rows = []
        for item in items:
            ids = self._encode(self._format(item) + f"{_LABELS[FIELDS[0]]}: ")
            if ids[:n_prefix] != self._prefix_ids:
                raise RefusalLabError("judge prompts do not share the rubric prefix; this is a bug in LlmJudge")
            rows.append(ids[n_prefix:])
        inputs = self._prefix.inputs(rows, lm.tokenizer.pad_token_id, lm.device)
        attention, positions = inputs["attention_mask"], inputs["position_ids"]
        out = lm.model(**inputs, use_cache=True, logits_to_keep=1)
        grades = {}
        for field in FIELDS:
            grades[field] = self._pick(out.logits[:, -1, :])
            if field in self._continuations:  # teacher-force the chosen grade and the next label
                forced = self._continuations[field][grades[field]].to(lm.device)
                attention = torch.cat([attention, torch.ones_like(forced)], dim=1)
                positions = positions[:, -1:] + torch.arange(1, forced.shape[1] + 1, device=lm.device)
                out = lm.model(input_ids=forced, attention_mask=attention, position_ids=positions,
                               past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
        values = {field: _VALUES[g].tolist() for field, g in grades.items()}
        return [Judgement(**{field: values[field][i] for field in _JUDGED}) for i in range(len(items))]

    # -- OpenAI-compatible endpoint --------------------------------------------------------------------------
    def _score_endpoint(self, items: list[str]) -> list[Judgement]:
        return [_parse_answer(self._chat(item)) for item in items]

    def _chat(self, item: str) -> str:
        """The endpoint's answer text for one item."""
        url = self.url.rstrip("/") + "/chat/completions"
        body = {"model": self.model, "temperature": 0, "max_tokens": 64,
                "messages": [{"role": "system", "content": self.rubric + JSON_FORMAT},
                             {"role": "user", "content": item}]}
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                payload = json.load(answer)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            fix = {401: f"set ${self.api_key_env} to a valid API key", 403: f"set ${self.api_key_env} to a key "
                   "allowed to use this model", 404: "check --judge-url (the base URL before /chat/completions, "
                   "e.g. http://localhost:8000/v1) and the model name"}.get(error.code, "check the server's log")
            raise RefusalLabError(f"judge endpoint {url} answered HTTP {error.code}: {detail}; {fix}") from None
        except (urllib.error.URLError, TimeoutError) as error:
            raise RefusalLabError(f"could not reach judge endpoint {url} ({getattr(error, 'reason', error)}); "
                                  "check --judge-url and that the server is running") from None
        except ValueError:
            raise RefusalLabError(f"judge endpoint {url} did not answer JSON; is --judge-url an OpenAI-compatible "
                                  "API base URL?") from None
        try:
            return payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RefusalLabError(f"judge endpoint {url} answered without choices[0].message.content: "
                                  f"{json.dumps(payload)[:300]}; is it an OpenAI-compatible chat API?") from None


def _parse_answer(content: str) -> Judgement:
    """The grades in an endpoint's answer: the first JSON object, with each field 0, 1 or 2."""
    match = re.search(r"\{.*?\}", content or "", re.DOTALL)
    try:
        answer = json.loads(match.group(0)) if match else {}
        return Judgement(**{field: GRADES[str(answer[field]).strip()] for field in _JUDGED})
    except (ValueError, KeyError, TypeError):
        raise RefusalLabError(f"the judge's answer is not the JSON object the rubric asks for ({{\"refusal\": 0-2, "
                              f"\"compliance\": 0-2, \"coherence\": 0-2}}): {content[:200]!r}; use a judge model "
                              "that follows instructions, or check the model name") from None

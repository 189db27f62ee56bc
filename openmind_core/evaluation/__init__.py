"""Standard evaluation: VQAv2 accuracy, CIDEr-D / BLEU-4 captions, chance baselines, ``openmind eval``.

``vqa``       the official VQAv2 answer normalisation and 10-answer consensus score
``captions``  pycocoevalcap's CIDEr-D and BLEU-4 with a documented simple tokenizer
``run``       score a saved model on lake rows, a JSONL file or an HF data set; eval.json
``lmms``      an lmms-eval model class (``lmms-eval --model openmind``), optional extra ``[eval]``
"""

from openmind_core.evaluation.captions import caption_scores, caption_tokens
from openmind_core.evaluation.run import EvalError, evaluate_model, evaluate_path, report_markdown, summary_lines
from openmind_core.evaluation.vqa import answers_of, normalize_vqa_answer, vqa_score

__all__ = ["EvalError", "answers_of", "caption_scores", "caption_tokens", "evaluate_model", "evaluate_path",
           "normalize_vqa_answer", "report_markdown", "summary_lines", "vqa_score"]

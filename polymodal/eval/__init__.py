"""Evaluation: retrieval Recall@K and median rank (retrieval), zero-shot top-1/top-5 (zeroshot), VQA accuracy
(vqa), BLEU and CIDEr-D of captions (captions), word-order tests (word_order), and what the figures rest on
(caveats: skipped rows, photos the model trained on, sets too small for a metric)."""

"""BART Table 1 ("Comparison of pre-training objectives") in miniature: which objective transfers?

  python -m launch.repro --config=configs/repro/bart_table1.py:variant=tiny    # the one command

Pretraining on the vendored Austen corpus with equal compute (steps x batch x tokens) and
comparable parameter counts (BART Sec 4.1: one 4-layer stack, or a 2 + 2 layer
encoder-decoder; BART's switches everywhere: post-LN, GELU, embedding LayerNorm); only the
objective and the mask it implies differ:
  lm                  GPT-style left-to-right LM (arch decoder, objective clm)
  permuted_lm         XLNet: permutation LM with two-stream attention (objective plm)
  mlm                 BERT's masked LM without NSP (arch encoder)
  multitask_mlm       UniLM: MLM under bidirectional / seq2seq / L2R / R2L masks
  token_masking       BART with noise=masking (arch encoder_decoder, objective denoising)
  token_deletion      noise=deletion
  text_infilling      noise=infilling (Poisson(3) spans, one [MASK] each)
  document_rotation   noise=rotate
  sentence_shuffling  noise=permute
  infilling_shuffling noise=infilling,permute (BART's final choice, Sec 4.3)
  scratch             the BART encoder-decoder from random weights (no pretraining)
Fine-tuning, `seeds` seeds each, on the vendored paraphrase (~MRPC / MNLI: sentence pairs)
and sentiment (~SST-2) tasks with a linear head (BART Sec 3.1: encoder-decoders classify the
final decoder state; encoders the [CLS] pooler; decoders the last token) and on
`task=modernize` (KJV -> WEB verses) as generation: dev perplexity of the target, as BART
Table 1 reports for ELI5 / XSum / ConvAI2 / CNN-DM, and chrF of the greedy output, always
beside the copy-the-source baseline. Encoders generate as UniLM does (masked targets under the
seq2seq mask); the LM reads `source [SEP] target` (BART Sec 3.4 / 4.1).

Never rank arms by pretraining loss: each predicts a different target.

arg: variant=tiny|base; stage=pretrain|finetune; objective= (pretrain); task=, setting=
(finetune); pretrained=DIR; seeds=3; corpus=; pretrain_steps= / finetune_steps= (0: the
variant's). variant=tiny: 1,200 pretraining steps of 8 x 128 tokens per arm at lr 1e-3 (at 32 x
128, 300 steps left every one-stack arm on the unigram plateau: more, smaller updates for the
same tokens get the LM past it by step ~400, but MLM, multitask MLM and the permuted LM stay
on it where the input hides the target: docs/reproductions.md); fine-tuning 300 steps of 32
examples at lr 1e-3 on paraphrase (128 tokens a pair), sentiment (64 tokens) and modernize
(128 tokens a verse pair:
the encoder-decoders read 64 source tokens and write 64, the one-stack models read both in
128), each scored once on the first 1,000 dev examples (modernize: 200 verses decoded). Fewer
fine-tuning steps leave paraphrase and sentiment at the majority class. Measured on 2 CPU
cores, two runs at a time: 5-10 min per pretraining arm, 2-7 min per fine-tuning run, 223 min
for the whole recipe (docs/reproductions.md). variant=base: BART Sec 4.1's
ablation size (6 + 6 layers or 12, d 768, 1M steps of 8k-token batches are far beyond 2 cores:
for accelerators; fine-tuning 3 epochs, every dev example).
"""
from configs import base
from configs.repro import recipe

# setting -> (model preset family, arch, layers per stack, objective, config.objective.* extras)
ARMS = {
    'lm': ('bart', 'decoder', 4, 'clm', {}),
    'permuted_lm': ('bart', 'encoder', 4, 'plm', {}),
    'mlm': ('bart', 'encoder', 4, 'mlm', {}),
    'multitask_mlm': ('bart', 'encoder', 4, 'unilm', {}),
    'token_masking': ('bart', 'encoder_decoder', 2, 'denoising', {'noises': 'masking'}),
    'token_deletion': ('bart', 'encoder_decoder', 2, 'denoising', {'noises': 'deletion'}),
    'text_infilling': ('bart', 'encoder_decoder', 2, 'denoising', {'noises': 'infilling'}),
    'document_rotation': ('bart', 'encoder_decoder', 2, 'denoising', {'noises': 'rotate'}),
    'sentence_shuffling': ('bart', 'encoder_decoder', 2, 'denoising', {'noises': 'permute'}),
    'infilling_shuffling': ('bart', 'encoder_decoder', 2, 'denoising',
                            {'noises': 'infilling,permute'}),
}
SETTINGS = {**{name: name for name in ARMS}, 'scratch': None}
TASKS = ('paraphrase', 'sentiment', 'modernize')
# Per task: (metric, scale to the table's units) columns; the first is the headline.
METRICS = {'paraphrase': (('dev/accuracy', 100),), 'sentiment': (('dev/accuracy', 100),),
           'modernize': (('dev/perplexity', 1), ('dev/chrf', 1))}
# The trivial predictor each task's numbers must clear (logged by fine-tuning at start).
BASELINES = {'paraphrase': ('majority class', 'baseline/accuracy', 'dev/accuracy'),
             'sentiment': ('majority class', 'baseline/accuracy', 'dev/accuracy'),
             'modernize': ('copy the source', 'baseline/chrf', 'dev/chrf')}
# BART Table 1 (Lewis et al. 2020; base-size models, 1M steps on books + Wikipedia): SQuAD
# 1.1 F1, MNLI accuracy, and ELI5 / XSum / ConvAI2 / CNN-DM perplexity (lower is better).
PAPER_NAME = 'BART Table 1'
PAPER_COLUMNS = ('SQuAD', 'MNLI', 'ELI5', 'XSum', 'ConvAI2', 'CNN/DM')
PAPER = {
    'lm': (76.7, 80.1, 21.40, 7.00, 11.51, 6.56),
    'permuted_lm': (89.1, 83.7, 24.03, 7.69, 12.23, 6.96),
    'mlm': (90.0, 83.5, 24.77, 7.87, 12.59, 7.06),
    'multitask_mlm': (89.2, 82.4, 23.73, 7.50, 12.39, 6.74),
    'token_masking': (90.4, 84.1, 25.05, 7.08, 11.73, 6.10),
    'token_deletion': (90.4, 84.0, 24.61, 6.90, 11.46, 5.87),
    'text_infilling': (90.8, 84.0, 24.26, 6.61, 11.05, 5.83),
    'document_rotation': (77.2, 75.3, 53.69, 17.14, 19.87, 10.59),
    'sentence_shuffling': (85.4, 81.5, 41.87, 10.93, 16.67, 7.89),
    'infilling_shuffling': (90.8, 83.8, 24.17, 6.62, 11.12, 5.41),
}
PAPER_ROW_NAMES = {
    'lm': 'Language Model', 'permuted_lm': 'Permuted Language Model',
    'mlm': 'Masked Language Model', 'multitask_mlm': 'Multitask Masked Language Model',
    'token_masking': 'BART w/ Token Masking', 'token_deletion': 'BART w/ Token Deletion',
    'text_infilling': 'BART w/ Text Infilling', 'document_rotation': 'BART w/ Document Rotation',
    'sentence_shuffling': 'BART w/ Sentence Shuffling',
    'infilling_shuffling': 'BART w/ Text Infilling + Sentence Shuffling',
    'scratch': '(no pre-training)'}

_TINY_TASKS = {'paraphrase': dict(steps=300, seq_len=128, eval_limit=1000),
               'sentiment': dict(steps=300, seq_len=64, eval_limit=1000),
               'modernize': dict(steps=300, pair_len=128, target_len=64, eval_limit=200)}
_BASE_TASKS = {'paraphrase': dict(steps=0, eval_limit=0), 'sentiment': dict(steps=0, eval_limit=0),
               'modernize': dict(steps=0, pair_len=128, target_len=64, eval_limit=0)}
VARIANTS = {
    'tiny': dict(width='tiny', pretrain_steps=1200, batch=8, seq_len=128, lr=1e-3, warmup=100,
                 finetune_lr=1e-3, tasks=_TINY_TASKS),
    'base': dict(width='base', pretrain_steps=1_000_000, batch=64, seq_len=512, lr=1e-4,
                 warmup=10_000, finetune_lr=3e-5, tasks=_BASE_TASKS),
}
# Layers of the tiny arms are set per arm; base uses BART Sec 4.1's 6 + 6 / 12.
_BASE_LAYERS = {2: 6, 4: 12}


def _args(arg: str) -> dict:
  args = base.parse_arg(arg, variant='tiny', stage='pretrain', objective='text_infilling',
                        task='paraphrase', setting='text_infilling', pretrained='', seeds=3,
                        corpus='', pretrain_steps=0, finetune_steps=0)
  recipe.choose('variant', args['variant'], VARIANTS)
  return args


def _arm(setting: str) -> tuple:
  """ARMS' row of a setting; 'scratch' is the text-infilling architecture, untrained."""
  return ARMS.get(setting, ARMS['text_infilling'])


def _architecture(c, arm: str, variant: dict):
  family, arch, layers, _, _ = _arm(arm)
  c.model.size = f"{family}-{variant['width']}"
  c.model.arch = arch
  c.model.num_layers = layers if variant['width'] == 'tiny' else _BASE_LAYERS[layers]
  if arm == 'permuted_lm':
    c.model.two_stream = True
  if arm == 'multitask_mlm':
    c.model.type_vocab_size = 6  # UniLM's segment embeddings name the LM objective


def _pretrain_config(args: dict, variant: dict):
  arm = recipe.choose('objective', args['objective'], ARMS)
  c = base.get_config()
  _architecture(c, arm, variant)
  _, _, _, objective, extras = ARMS[arm]
  c.objective.name = objective
  c.objective.max_predictions_per_seq = 20
  for key, value in extras.items():
    c.objective[key] = value
  return recipe.pretraining(c, args, variant, seq_len=variant['seq_len'], evaluations=2)


def _finetune_config(args: dict, variant: dict):
  c, setting, task, pretrained = recipe.finetuning(args, SETTINGS, TASKS)
  if SETTINGS[setting]:
    c.finetune.init_from = f'{pretrained}/objective={setting}'
  else:  # random weights, the BART architecture, the pretrained models' tokenizer
    _architecture(c, 'text_infilling', variant)
    c.data.tokenizer.path = f'{pretrained}/tokenizer.model'
  recipe.train_and_dev_only(c, 'tsv.gz')
  c.finetune.lm_loss_weight = 0.0  # every arm fine-tuned alike: the task loss only
  recipe.task_budget(c, args, variant, task, arch=_arm(setting)[1])
  return c


def get_config(arg: str = ''):
  return recipe.staged(_args(arg), VARIANTS, _pretrain_config, _finetune_config)


def get_sweep(arg: str = ''):
  """stage=pretrain: one run per objective; stage=finetune: task x setting x seed."""
  return recipe.sweep(_args(arg), ARMS, TASKS, SETTINGS)

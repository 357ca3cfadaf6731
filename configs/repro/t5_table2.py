"""T5 Table 2 ("Performance of the different architectural variants") in miniature.

  python -m launch.repro --config=configs/repro/t5_table2.py:variant=tiny    # the one command

Architectures (Raffel et al. 2020, Sec 3.2.2), T5's switches everywhere (pre-norm RMSNorm,
no biases, relative position bias, ReLU), at the paper's parameter (P) and cost (M)
accounting with L = 4 layers of d 128 (tiny) or 12 of d 768 (base):
  enc_dec         encoder-decoder, L + L layers               2P params, M FLOPs
  enc_dec_shared  the same with one shared stack              P, M
  enc_dec_half    encoder-decoder, L/2 + L/2 layers           P, M/2
  lm              decoder-only language model, L layers       P, M
  prefix_lm       decoder-only, bidirectional over the inputs P, M
each pretrained with two objectives (Sec 3.2.3) on Austen, equal steps x batch:
  denoising  span corruption (15%, mean span 3); the decoder-only rows read the corrupted
             inputs then the targets as one sequence (the prefix LM bidirectionally over the
             inputs) and are trained on the targets
  lm         a random split of each window: prefix -> target (encoder-decoders: prefix into
             the encoder; prefix LM: prefix visible both ways); the LM predicts every token
plus `scratch`, the encoder-decoder fine-tuned from random weights (T5 Table 1's "No
pre-training" row).
Cost per arm: an L-layer stack over inputs + targets tokens, as in the paper: the encoder-decoder
runs each input token through L encoder layers and each target through L decoder layers.
Fine-tuned text to text like T5 (Sec 2.4), `seeds` seeds: paraphrase (~MRPC: the label as
a word, scored by exact match = accuracy) and task=modernize (dev chrF and target perplexity,
beside copy-the-source), with the decoder-only rows reading `source [SEP] target` (the prefix
LM bidirectionally over the source).

arg: variant=tiny|base; stage=pretrain|finetune; objective= (pretrain: <arch>-<objective>);
task=, setting=; pretrained=DIR; seeds=3; corpus=; pretrain_steps= / finetune_steps=.
variant=tiny: 1,200 pretraining steps of 8 examples (encoder length 128; small batches get
past the unigram plateau, configs/repro/bart_table1.py), fine-tuning 300 steps of 32 examples
at lr 1e-3 on paraphrase (160 tokens a pair; a 12-token target fits T5's label word
`not_equivalent`, 8 pieces + </s> with the Austen tokenizer) and modernize (128 tokens a
verse pair: the encoder-decoders read 64 source tokens and write 64, the decoders read both
in 128), scored once on the first 1,000 dev pairs / 200 dev verses decoded. Measured on 2 CPU
cores, two runs at a time: 41.5 min of pretraining, ~3.5-8 min per paraphrase run and ~4-9
min per modernize run, 228.3 min in all (docs/reproductions.md "T5 Table 2, measured").
variant=base: T5's baseline size and schedule (2^18 steps of 2^16 tokens; accelerators).
"""
from configs import base
from configs.repro import recipe

# arch name -> (arch, encoder layers as a fraction of L, share stacks, prefix visible)
ARCHS = {'enc_dec': ('encoder_decoder', 1, False, False),
         'enc_dec_shared': ('encoder_decoder', 1, True, False),
         'enc_dec_half': ('encoder_decoder', 0.5, False, False),
         'lm': ('decoder', 1, False, False),
         'prefix_lm': ('decoder', 1, False, True)}
OBJECTIVES = ('denoising', 'lm')
ARMS = tuple(f'{arch}-{objective}' for objective in OBJECTIVES for arch in ARCHS)
SETTINGS = {**{arm: arm for arm in ARMS}, 'scratch': None}  # scratch: enc_dec, random weights
TASKS = ('paraphrase', 'modernize')
METRICS = {'paraphrase': (('dev/accuracy', 100),),
           'modernize': (('dev/chrf', 1), ('dev/perplexity', 1))}
BASELINES = {'paraphrase': ('majority class', 'baseline/accuracy', 'dev/accuracy'),
             'modernize': ('copy the source', 'baseline/chrf', 'dev/chrf')}
# T5 Table 2 (T5 base-size models, 2^35 tokens of C4): GLUE average, CNN/DM ROUGE-2-F,
# SQuAD exact match.
PAPER_NAME = 'T5 Table 2'
PAPER_COLUMNS = ('GLUE', 'CNNDM', 'SQuAD')
PAPER = {
    'enc_dec-denoising': (83.28, 19.24, 80.88),
    'enc_dec_shared-denoising': (82.81, 18.78, 80.63),
    'enc_dec_half-denoising': (80.88, 18.97, 77.59),
    'lm-denoising': (74.70, 17.93, 61.14),
    'prefix_lm-denoising': (81.82, 18.61, 78.94),
    'enc_dec-lm': (79.56, 18.59, 76.02),
    'enc_dec_shared-lm': (79.60, 18.13, 76.35),
    'enc_dec_half-lm': (78.67, 18.26, 75.32),
    'lm-lm': (73.78, 17.54, 53.81),
    'prefix_lm-lm': (79.68, 17.84, 76.87),
}
PAPER_ROW_NAMES = {
    'enc_dec': 'Encoder-decoder (2P, M)', 'enc_dec_shared': 'Enc-dec, shared (P, M)',
    'enc_dec_half': 'Enc-dec, 6 layers (P, M/2)', 'lm': 'Language model (P, M)',
    'prefix_lm': 'Prefix LM (P, M)'}
PAPER_ROW_NAMES = {arm: f'{PAPER_ROW_NAMES[arm.split("-")[0]]}, '
                        f'{"Denoising" if arm.endswith("denoising") else "LM"}' for arm in ARMS}
PAPER['scratch'] = (66.22, 17.60, 50.31)  # T5 Table 1, the baseline without pre-training
PAPER_ROW_NAMES['scratch'] = 'No pre-training (Table 1)'


def arch_name(setting: str) -> str:
  """ARCHS' key of a fine-tuning setting ('scratch': the baseline encoder-decoder)."""
  return setting.split('-')[0] if SETTINGS[setting] else 'enc_dec'


def _architecture(c, name: str, variant: dict):
  arch, fraction, share, _ = ARCHS[name]
  c.model.size = f"t5-{variant['width']}"
  c.model.arch = arch
  c.model.num_layers = int(variant['layers'] * fraction)
  c.model.share_stacks = share

# Per task: fine-tuning steps, input length (with the target, for the decoders) or tokens per
# verse pair, target length and dev examples scored (recipe.task_budget).
_TINY_TASKS = {'paraphrase': dict(steps=300, seq_len=160, target_len=12, eval_limit=1000),
               'modernize': dict(steps=300, pair_len=128, target_len=64, eval_limit=200)}
_BASE_TASKS = {'paraphrase': dict(steps=2**18, seq_len=160, target_len=12, eval_limit=0),
               'modernize': dict(steps=2**18, pair_len=128, target_len=64, eval_limit=0)}
VARIANTS = {
    'tiny': dict(width='tiny', layers=4, pretrain_steps=1200, batch=8, seq_len=128, lr=1e-3,
                 warmup=100, finetune_lr=1e-3, tasks=_TINY_TASKS),
    'base': dict(width='base', layers=12, pretrain_steps=2**18, batch=128, seq_len=512,
                 lr=1e-3, warmup=10_000, finetune_lr=1e-3, tasks=_BASE_TASKS),
}


def _args(arg: str) -> dict:
  args = base.parse_arg(arg, variant='tiny', stage='pretrain', objective='enc_dec-denoising',
                        task='paraphrase', setting='enc_dec-denoising', pretrained='',
                        seeds=3, corpus='', pretrain_steps=0, finetune_steps=0)
  recipe.choose('variant', args['variant'], VARIANTS)
  return args


def _pretrain_config(args: dict, variant: dict):
  arm = recipe.choose('objective', args['objective'], ARMS)
  name, objective = arm.split('-')
  arch, _, _, prefix = ARCHS[name]
  c = base.get_config()
  _architecture(c, name, variant)
  if objective == 'denoising':
    c.objective.name = 'span_corruption'
    c.objective.bidirectional_inputs = prefix
  else:
    c.objective.name = 'prefix_lm' if (arch == 'encoder_decoder' or prefix) else 'clm'
  return recipe.pretraining(c, args, variant, seq_len=variant['seq_len'], evaluations=2)


def _finetune_config(args: dict, variant: dict):
  c, setting, task, pretrained = recipe.finetuning(args, SETTINGS, TASKS)
  name = arch_name(setting)
  if SETTINGS[setting]:
    c.finetune.init_from = f'{pretrained}/objective={setting}'
  else:  # random weights, the pretrained models' tokenizer
    _architecture(c, name, variant)
    c.data.tokenizer.path = f'{pretrained}/tokenizer.model'
  c.finetune.bidirectional_prompt = ARCHS[name][3]
  if task == 'paraphrase':  # T5's MRPC words (Appendix D)
    c.finetune.text_to_text = True
    c.finetune.label_words = 'not_equivalent,equivalent'
  recipe.train_and_dev_only(c, 'tsv.gz')
  recipe.task_budget(c, args, variant, task, arch=ARCHS[name][0])
  return c


def get_config(arg: str = ''):
  return recipe.staged(_args(arg), VARIANTS, _pretrain_config, _finetune_config)


def get_sweep(arg: str = ''):
  """stage=pretrain: the 10 arch x objective arms; stage=finetune: task x arm x seed."""
  return recipe.sweep(_args(arg), ARMS, TASKS, SETTINGS)

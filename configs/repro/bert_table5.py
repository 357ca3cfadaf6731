"""BERT Table 5 ("Effect of Pre-training Tasks") in miniature: is bidirectionality the point?

  python -m launch.repro --config=configs/repro/bert_table5.py:variant=tiny    # the one command

Pretraining, with equal compute (same steps x batch x sequence length), the same corpus,
tokenizer, architecture and optimizer; only the objective (and so the attention mask) differs:
  (a) objective=mlm_nsp  BERT: masked LM + next-sentence prediction (Sec 3.1)
  (b) objective=mlm      "No NSP"
  (c) objective=clm      "LTR & No NSP": a left-to-right LM, i.e. the same Block stack with a
                         causal mask (research/models/attention.py)
Fine-tuning (settings), each on the vendored sentiment (~SST-2), paraphrase (~MRPC, accuracy
as in Table 5) and POS-tagging tasks, over `seeds` seeds, scored on dev:
  mlm_nsp, mlm, ltr        (a), (b), (c) with one linear head (ltr: GPT-1's last-token
                           classifier; no auxiliary LM loss, so only pretraining differs)
  ltr_bilstm               (d) = (c) + a randomly initialised BiLSTM under the head
                           (Table 5 "+ BiLSTM")
  scratch                  the encoder from random weights: what pretraining adds at all
launch/repro.py runs both stages (launch/sweep.py, skipping finished runs) and writes the
table of mean ± std beside the paper's numbers, and a plot.

arg: variant=tiny|base; stage=pretrain|finetune (the sweep stage); objective= (pretrain);
task=, setting= (finetune); pretrained=DIR (where the pretraining runs live, named
`objective=<name>` by launch/sweep.py); seeds=3; corpus= (default: vendored Austen);
pretrain_steps= / finetune_steps= / finetune_lr= (0: the variant's value; e.g. smaller for a
quick check, or another rate: BERT picks the best fine-tuning rate per task on dev, A.3).

variant=tiny: BERT-tiny shape (2 layers, d=128), 1,500 pretraining steps of 32 x 128 tokens
(~7 passes over Austen), then 300 fine-tuning steps of 32 examples at lr 1e-3; 3 tasks x 5
settings x 3 seeds = 45 fine-tuning runs. Measured (docs/reproductions.md): 88 min of wall
time on a 2-core CPU with `--parallel=2` (12 of them stopped for other work). Pretraining
beats random weights on paraphrase (the MLM encoder narrowly ahead of the left-to-right LM),
not on sentiment (6M pretraining tokens are too few; adding the reviews' own text to the
corpus does not change that); the BiLSTM lifts the left-to-right model on tagging only.
variant=base: the paper's recipe (BERT_BASE, Sec 3 and A.2-A.3): 1M pretraining steps of
256 x 128 tokens (the paper's last 10% at 512 tokens is not reproduced), Adam 1e-4, 10k warmup;
fine-tuning 3 epochs, batch 32, lr 3e-5. Give it a large corpus (corpus=PATH); Austen is 0.7M
words. Paper (BERT_BASE dev, Table 5): see PAPER below.
"""
from configs import base, finetune
from configs.repro import recipe

OBJECTIVES = ('mlm_nsp', 'mlm', 'clm')
TASKS = ('sentiment', 'paraphrase', 'tagging')
# setting -> (pretraining objective or None for random init, BiLSTM under the head)
SETTINGS = {'mlm_nsp': ('mlm_nsp', False), 'mlm': ('mlm', False), 'ltr': ('clm', False),
            'ltr_bilstm': ('clm', True), 'scratch': (None, False)}
SPLIT_SUFFIX = {'sentiment': 'tsv.gz', 'paraphrase': 'tsv.gz', 'tagging': 'txt.gz'}
# The table's metric per task, x 100 (Table 5 reports accuracy for MRPC and SST-2).
METRICS = {task: (('dev/accuracy', 100),) for task in TASKS}
BASELINES = {task: ('majority class', 'baseline/accuracy', 'dev/accuracy')
             for task in TASKS}
# BERT paper Table 5 (BERT_BASE, dev sets): accuracy except SQuAD v1.1 F1.
PAPER_NAME = 'BERT Table 5, BERT_BASE dev; accuracy, SQuAD F1'
PAPER_COLUMNS = ('MNLI-m', 'QNLI', 'MRPC', 'SST-2', 'SQuAD')
PAPER = {
    'mlm_nsp': (84.4, 88.4, 86.7, 92.7, 88.5),
    'mlm': (83.9, 84.9, 86.5, 92.6, 87.9),
    'ltr': (82.1, 84.3, 77.5, 92.1, 77.8),
    'ltr_bilstm': (82.1, 84.1, 75.7, 91.6, 84.9),
}
PAPER_ROW_NAMES = {'mlm_nsp': 'BERT_BASE (MLM+NSP)', 'mlm': 'No NSP', 'ltr': 'LTR & No NSP',
                   'ltr_bilstm': '+ BiLSTM', 'scratch': '(no pre-training)'}

VARIANTS = {
    'tiny': dict(size='tiny', pretrain_steps=1500, batch=32, lr=1e-3, warmup=150,
                 finetune_steps=300, finetune_lr=1e-3),
    'base': dict(size='base', pretrain_steps=1_000_000, batch=256, lr=1e-4, warmup=10_000,
                 finetune_steps=0, finetune_lr=3e-5),  # finetune_steps 0: 3 epochs
}


def _args(arg: str) -> dict:
  args = base.parse_arg(arg, variant='tiny', stage='pretrain', objective='mlm_nsp',
                        task='sentiment', setting='mlm_nsp', pretrained='', seeds=3, corpus='',
                        pretrain_steps=0, finetune_steps=0, finetune_lr=0.0)
  recipe.choose('variant', args['variant'], VARIANTS)
  return args


def _pretrain_config(args: dict, variant: dict):
  objective = recipe.choose('objective', args['objective'], OBJECTIVES)
  c = base.get_config()
  # One architecture for all three: BERT's (post-LN, segment embeddings); the decoder is the
  # same stack run with a causal mask.
  c.model.size = f"bert-{variant['size']}"
  c.model.arch = 'decoder' if objective == 'clm' else 'encoder'
  c.objective.name = objective
  return recipe.pretraining(c, args, variant, seq_len=128, evaluations=4,
                            shared_tokenizer=False)


def _finetune_config(args: dict, variant: dict):
  setting, task = recipe.choose('setting', args['setting'], SETTINGS), args['task']
  objective, bilstm = SETTINGS[setting]
  c = finetune.get_config(f"task={task},variant={variant['size']}").unlock()
  pretrained = recipe.pretrained_root(args)
  if objective:
    c.finetune.init_from = f'{pretrained}/objective={objective}'
  else:  # random weights, but the same tokenizer as the pretrained models
    c.data.tokenizer.path = f'{pretrained}/objective=mlm_nsp/tokenizer.model'
  recipe.train_and_dev_only(c, SPLIT_SUFFIX[task])  # Table 5 reports dev sets
  c.finetune.bilstm_size = base.model_field(c, 'd_model') // 2 if bilstm else 0
  c.finetune.lm_loss_weight = 0.0  # Table 5 fine-tunes every model alike: task loss only
  steps = args['finetune_steps'] or variant['finetune_steps']
  base.dev_once(c, steps=steps, learning_rate=args['finetune_lr'] or variant['finetune_lr'])
  return c


def get_config(arg: str = ''):
  return recipe.staged(_args(arg), VARIANTS, _pretrain_config, _finetune_config)


def get_sweep(arg: str = ''):
  """stage=pretrain: the three objectives (each trains its own tokenizer); stage=finetune:
  task x setting x seed, reading the pretraining runs from the same sweep root."""
  return recipe.sweep(_args(arg), OBJECTIVES, TASKS, SETTINGS, shared_tokenizer=False)

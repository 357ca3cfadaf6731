"""Fine-tuning a pretrained encoder (BERT Sec 4) or decoder (GPT-1 Sec 3.2-3.3) on a task.

  # pretrain a tiny BERT, then fine-tune it on the vendored sentiment task
  python -m research.main --config=configs/bert.py:variant=tiny --workdir=/tmp/bert_tiny
  python -m research.main --config=configs/finetune.py:task=sentiment,init_from=/tmp/bert_tiny \
      --workdir=/tmp/bert_tiny_sentiment
  # the no-pretraining baseline: same architecture from random weights (reusing the tokenizer)
  python -m research.main --config=configs/finetune.py:task=sentiment \
      --config.data.tokenizer.path=/tmp/bert_tiny/tokenizer.model --workdir=/tmp/scratch_sentiment
  # a GLUE task straight from its download directory
  python -m research.main --config=configs/finetune.py:task=glue,init_from=/tmp/bert_tiny \
      --config.task.name=rte --config.task.data_dir=glue_data/RTE --workdir=/tmp/rte
  # any headed TSV/CSV/JSONL, CoNLL or SQuAD file: name its columns on the command line
  python -m research.main --config=configs/finetune.py:init_from=/tmp/bert_tiny \
      --config.task.format=csv --config.task.data_dir=DIR --config.task.text_columns=title,body \
      --config.task.label_column=stars --workdir=/tmp/reviews
  # evaluate a fine-tuned workdir again (appends to its metrics.jsonl)
  python -m research.main --config=configs/finetune.py:task=sentiment,init_from=/tmp/bert_tiny \
      --workdir=/tmp/bert_tiny_sentiment --mode=eval

task: sentiment (vendored rotten_tomatoes, SST-2-like), paraphrase (vendored bible_paraphrase,
MRPC-like), tagging (vendored brown_pos, POS), modernize (vendored bible_seq2seq, KJV -> WEB
verse rewriting, seq2seq), glue (set task.name and task.data_dir), squad
(set task.data_dir), custom (set task.* yourself). variant: the architecture used when
init_from is empty (a pretrained workdir decides it otherwise): a BERT size (tiny, mini, ...)
or any preset of research/models/presets.py (gpt-tiny, t5-tiny, bart-tiny, ...); task=modernize
defaults to t5-tiny, the others to BERT-tiny.

Expected (task=sentiment, defaults: 3 epochs = 956 steps, ~2 min on a 2-core CPU): dev
accuracy ~72% from random weights (majority class: 60%); a tiny BERT pretrained 3,000 steps on
Austen reaches only ~68% (too little pretraining to help this task; docs/reproductions.md).
task=paraphrase, 300 steps: ~63% pretrained vs ~60% from random weights (chance: 50%).
"""
import pathlib

import ml_collections

from configs import base

ASSETS = pathlib.Path(__file__).resolve().parents[1] / 'research' / 'data' / 'assets'
# The vendored tasks (research/data/assets/*/PROVENANCE.md): task.* overrides.
VENDORED = {
    'sentiment': dict(name='rotten_tomatoes', format='tsv', data_dir=str(ASSETS / 'rotten_tomatoes'),
                      text_columns='sentence', label_column='label', metrics='accuracy'),
    'paraphrase': dict(name='bible_paraphrase', format='tsv',
                       data_dir=str(ASSETS / 'bible_paraphrase'),
                       text_columns='sentence1,sentence2', label_column='label',
                       metrics='accuracy,f1'),
    'tagging': dict(name='brown_pos', format='conll', data_dir=str(ASSETS / 'brown_pos')),
    'modernize': dict(name='bible_seq2seq', format='tsv', type='seq2seq',
                      data_dir=str(ASSETS / 'bible_seq2seq'), source_column='source',
                      target_column='target'),
}
# Tokens per example (Austen tokenizer): 94% of review snippets fit in 64, 92% of verse pairs
# in 128, 98% of Brown sentences in 96 (words cut off count as mistagged); modernize: 96% of
# KJV sources and 97% of WEB targets fit in 80 with two special tokens (99% in 96).
SEQ_LEN = {'sentiment': 64, 'paraphrase': 128, 'tagging': 96, 'modernize': 80, 'glue': 128,
           'squad': 384, 'custom': 128}


def add_fields(c: ml_collections.ConfigDict) -> None:
  """The task.* and finetune.* sections, every field commented (defaults for any task)."""
  c.task = ml_collections.ConfigDict()
  c.task.name = ''                  # GLUE task (format=glue: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli); else a label
  c.task.format = 'tsv'             # 'glue' | 'tsv' | 'csv' | 'jsonl' | 'conll' | 'squad'
  c.task.data_dir = ''              # holds train.<ext>, dev.<ext>[, test.<ext>] (.gz allowed)
  c.task.train = ''                 # explicit split files (override data_dir)
  c.task.dev = ''
  c.task.test = ''
  c.task.dev_fraction = 0.0         # >0 and no dev file: hold out this fraction of train as dev (stratified by label; research/tasks/holdout.py)
  c.task.dev_seed = 0               # which examples dev_fraction holds out; fixed apart from train.seed so seeds share one dev set
  c.task.type = ''                  # '' = from format (conll: tagging, squad: span, else classification); or regression, multiple_choice, seq2seq
  c.task.style = ''                 # research/tasks/styles/ module ('' = the type's: classification, tagging, span, seq2seq; text_to_text with finetune.text_to_text)
  c.task.text_columns = 'sentence'  # comma-separated: one column (single sentence) or two (pair); MC: the shared context
  c.task.label_column = 'label'     # class name / number (regression) / index of the right choice
  c.task.choice_columns = ''        # multiple choice: comma-separated columns, or one list-valued JSON key
  c.task.source_column = 'source'   # seq2seq: the input text's column
  c.task.target_column = 'target'   # seq2seq: the output text's column (a test file may lack it: unlabelled)
  c.task.max_target_len = 0         # seq2seq: target tokens (0: encoder_decoder max_seq_len, decoder half of it)
  c.task.strict = False             # True: a malformed data row (too few fields, a missing column, an empty text) is an error naming file:line; False: dropped, counted and reported
  c.task.header = True              # TSV/CSV: first row names the columns; False: columns are 0-based indices
  c.task.labels = ''                # comma-separated class names (order = logit order); '' = num_labels or inferred from train
  c.task.num_labels = 0             # >0: classes are '0'..'num_labels-1'
  c.task.metrics = ''               # comma-separated, first = headline; '' = the type's (GLUE: the task's) defaults
  c.task.symmetric = False          # pair without order: decoders read both orders (GPT-1 Sec 3.3 Similarity)
  c.task.doc_stride = 128           # span QA: tokens between the starts of overlapping context windows
  c.task.max_query_len = 64         # span QA: question tokens kept
  c.task.max_answer_len = 30        # span QA: longest predicted answer, in tokens
  c.task.train_limit = 0            # >0: use only the first N training examples (quick runs)
  c.task.eval_limit = 0             # >0: evaluate only the first N examples of each other split

  c.finetune = ml_collections.ConfigDict()
  c.finetune.init_from = ''         # pretraining workdir or HF BERT/GPT-2/T5/BART directory; '' = random init of config.model (no-pretraining baseline)
  c.finetune.init_step = 0          # checkpoint step of init_from; 0 = its latest
  c.finetune.input_style = 'auto'   # 'auto' (encoder/encoder_decoder: bert, decoder: gpt) | 'bert' | 'gpt'
  c.finetune.text_to_text = False   # classification as text (T5 Sec 2.4): the model writes the label word
  c.finetune.label_words = ''       # text_to_text: comma-separated word per class ('' = the class names)
  c.finetune.num_beams = 1          # decoding of seq2seq / text-to-text evaluation (1 = greedy)
  c.finetune.bidirectional_prompt = False  # seq2seq on a decoder: read the source as a prefix LM does
  c.finetune.seq2seq_mask_prob = 0.5  # seq2seq on an encoder (UniLM Sec 2.4): target tokens masked per epoch
  c.finetune.lm_loss_weight = 0.5   # decoders: auxiliary LM loss weight (GPT-1 Sec 3.2, lambda = 0.5)
  c.finetune.bilstm_size = 0        # >0: BiLSTM with this many units per direction under the head (BERT Table 5)
  c.finetune.epochs = 3.0           # passes over train (BERT A.3: 2-4; GPT-1: 3); 0 = use train.steps
  c.finetune.warmup_fraction = 0.1  # warmup as a fraction of the updates (BERT); 0 = use optim.warmup_steps


def get_config(arg: str = ''):
  args = base.parse_arg(arg, task='sentiment', init_from='', variant='')
  c = base.get_config()
  variant = args['variant'] or ('t5-tiny' if args['task'] == 'modernize' else 'tiny')
  c.model.size = variant if '-' in variant else f'bert-{variant}'
  add_fields(c)
  task = args['task']
  if task not in VENDORED and task not in SEQ_LEN:
    raise ValueError(f'unknown task={task!r}; use one of {sorted(SEQ_LEN)}')
  for key, value in VENDORED.get(task, {}).items():
    c.task[key] = value
  if task == 'glue':
    c.task.format = 'glue'
  elif task == 'squad':
    c.task.format, c.task.name = 'squad', 'squad'
  c.finetune.init_from = args['init_from']
  c.data.max_seq_len = SEQ_LEN[task]
  # BERT A.3 fine-tuning: batch 32, Adam lr in {5e-5, 3e-5, 2e-5}, dropout 0.1, 10% warmup;
  # small models want larger rates (Turc et al. 2019 search up to 1e-4).
  c.train.batch_size = 32
  c.train.eval_batch_size = 64
  c.train.log_every = 50
  c.train.eval_every = 500
  c.checkpoint.every = 500
  c.checkpoint.keep = 1
  c.optim.learning_rate = 1e-4 if variant.endswith(('tiny', 'mini')) else 3e-5
  c.optim.weight_decay = 0.01
  return c.lock()

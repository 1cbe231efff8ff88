"""seqio tasks and mixtures of fam-jax, importable as `fam_jax.tasks`.

Needs the `data` extra (seqio, TensorFlow); the model in `fam_jax` does not.
Importing registers every task and mixture (PassKey, Flan, the paper's
long-context evaluations); no data directory needs to exist until a dataset
is read. Vocabulary: `vocabularies.get_vocabulary` (gin), bytes by default.
"""

from fam_jax.tasks import flan
from fam_jax.tasks import long_context
from fam_jax.tasks import passkey
from fam_jax.tasks import text
from fam_jax.tasks.registration import register_long_context_task
from fam_jax.tasks.sources import FileSource
from fam_jax.tasks.sources import GeneratorSource
from fam_jax.tasks.sources import local_data_dir
from fam_jax.tasks.text import register_text_task
from fam_jax.tasks.vocabularies import get_vocabulary

passkey.register_all()
flan.register_all()
long_context.register_all()
text.register_all()

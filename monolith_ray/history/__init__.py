"""Real-time user-history features: a user's last N positive actions as multi-valued slots
(``recent_items``, ``recent_genres``), bounded per user and in users, expiring, in event time.

``store`` keeps one slot's entries live (``HistoryStore``), ``live`` all slots of a config
(``UserHistory``), ``replay`` builds the same columns for a table by replaying its event time
(``with_history``), ``server`` holds a ``UserHistory`` in a Ray actor fed from the examples
topic and read by serving (``HistoryServer``, ``start_history_server``; imported from
``monolith_ray.history.server``, so that replay needs no Ray). A value at time t uses only actions with event time strictly before t.
"""

from monolith_ray.history.live import UserHistory as UserHistory
from monolith_ray.history.replay import replay_slot as replay_slot
from monolith_ray.history.replay import with_history as with_history
from monolith_ray.history.store import HistoryStore as HistoryStore

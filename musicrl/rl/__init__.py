"""RL finetuning (MusicRL §3.2): KL-regularised REINFORCE with a value baseline, stages R, U and RU."""

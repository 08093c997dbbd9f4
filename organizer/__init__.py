"""The organizer's main job: team archives -> monitored runs -> scores -> ranked leaderboard."""

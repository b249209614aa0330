"""AWS profile: CloudFormation template (EC2 GPU Auto Scaling group behind an ALB) and the code that applies it."""

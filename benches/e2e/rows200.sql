SELECT aid, abalance FROM pgbench_accounts WHERE aid BETWEEN 1 AND 200;

import type { TaskFilter, TaskLogger, TaskMetrics, TaskObserver, TaskRecord } from '../types.js';

/** What the admin API reads and does through its TaskManager (so it depends on this, not on the manager). */
export interface AdminHost {
  readonly logger: TaskLogger | undefined;
  get(id: string): Promise<TaskRecord | undefined>;
  list(filter?: TaskFilter): Promise<TaskRecord[]>;
  retry(id: string): Promise<string>;
  cancel(id: string, options?: { reason?: string }): Promise<boolean>;
  metrics(): Promise<TaskMetrics>;
  subscribe(observer: TaskObserver): () => void;
}
